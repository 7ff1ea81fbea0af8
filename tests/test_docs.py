"""The docs match the code: every setting is in the README's table."""

from __future__ import annotations

from asyncapp.settings import Settings
from tests.conftest import REPO

#: Settings that have no README row yet.  Remove a name once its row is there: the test
#: fails until you do, so the list cannot hide a row that is missing.
README_ROW_OWED = ["ASYNCAPP_DEBUG"]


def test_readme_documents_every_setting() -> None:
    readme = (REPO / "README.md").read_text()
    missing = [
        f"ASYNCAPP_{name.upper()}"
        for name in Settings.model_fields
        if f"| `ASYNCAPP_{name.upper()}` |" not in readme
    ]
    documented_now = sorted(set(README_ROW_OWED) - set(missing))
    assert documented_now == [], f"the README has {documented_now} now: remove from README_ROW_OWED"
    assert missing == README_ROW_OWED


def test_readme_starts_with_the_two_commands() -> None:
    commands = [
        line.strip()
        for line in (REPO / "README.md").read_text().splitlines()
        if line.startswith("    python3 -m venv")
    ]
    assert commands[:2] == [
        "python3 -m venv .venv && .venv/bin/pip install -e . && "
        ".venv/bin/hypercorn -c hypercorn.toml asyncapp.asgi:app",
        "python3 -m venv .venv && .venv/bin/pip install -e '.[test]' && .venv/bin/pytest",
    ]
    ci = (REPO / ".ci" / "run").read_text()
    assert commands[1] in ci, ".ci/run must call the README's test command"
