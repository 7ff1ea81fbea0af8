"""Jobs declared in code by two releases of an app, for the deploy tests.

``TESTS_RELEASE`` (``old`` or ``new``) is the release "the code" is; the jobs mark
``TESTS_RELEASE_PATH`` (``tests.jobs:mark`` lines, labelled with the release whose
definition ran).  ``daily`` is due once, at ``TESTS_RELEASE_AT``; ``tick`` every
second; ``only_old`` and ``only_new`` are declared by one release each.
"""

from __future__ import annotations

import os

from asyncapp import task
from tests.jobs import mark

RELEASE = os.environ.get("TESTS_RELEASE", "old")
PATH = os.environ.get("TESTS_RELEASE_PATH", os.devnull)
AT = os.environ.get("TESTS_RELEASE_AT", "2099-01-01T00:00:00+00:00")
TICK = os.environ.get("TESTS_RELEASE_TICK") == "1"


@task("interval", hours=24, start_date=AT, id="daily", args=[PATH], kwargs={"label": RELEASE},
      misfire_grace_time=60)  # fmt: skip
async def daily(path: str, label: str) -> None:
    await mark(path, label)


@task("interval", seconds=1, id="tick", args=[f"{PATH}.tick"], kwargs={"label": RELEASE},
      enabled=lambda _: TICK)  # fmt: skip
async def tick(path: str, label: str) -> None:
    await mark(path, label)


if RELEASE == "old":

    @task("interval", hours=1, id="only_old")
    async def only_old() -> None:
        """Declared by the old release only."""

else:

    @task("interval", hours=1, id="only_new")
    async def only_new() -> None:
        """Declared by the new release only."""
