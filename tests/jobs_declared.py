"""A job declared in code, for the startup-upsert and restart tests.

``TESTS_DECLARED_MINUTES`` lets a test change "the code" between two starts.
"""

from __future__ import annotations

import os

from asyncapp import task


@task("interval", minutes=int(os.environ.get("TESTS_DECLARED_MINUTES", "30")), id="declared")
async def declared() -> None:
    """Does nothing; its schedule is what the tests look at."""
