"""A job declared in code that fires five times a second."""

from __future__ import annotations

from asyncapp import task
from tests.jobs import record


@task("interval", seconds=0.2, id="tick", args=("tick",))
async def tick(tag: str) -> None:
    await record(tag)
