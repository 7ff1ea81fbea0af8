"""The package's layers hold: every import points down, nothing forms a cycle, and
no module above the store imports SQLAlchemy or psycopg.

The contract is ``[tool.importlinter]`` in ``pyproject.toml``; this runs it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO


def test_every_import_points_down() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run(
        [str(lint), "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout
    # Nothing above asyncapp.store imports SQLAlchemy (its own contract).
    assert "One store boundary: SQL only under asyncapp.store KEPT" in done.stdout
