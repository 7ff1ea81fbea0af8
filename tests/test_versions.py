"""A job's versions never go backwards, so every process fires its newest definition.

Each process caches the jobs and ignores a row older than what it holds.  When a
job was removed and added again while another process's change feed lagged, the
new row used to start again at version 1: the lagging process kept its old
definition, its claims were refused as stale, and it reloaded the same ignored
row, never firing the job again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from flask import Flask

from tests import jobs
from tests.conftest import AUTH
from tests.test_store import last_change, started

pytestmark = pytest.mark.timeout(60)


async def test_a_job_removed_and_added_again_is_fired_by_a_lagging_process(
    make_app: Callable[..., Flask], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    jobs.reset()
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    old = {"id": "x", "func": "tests.jobs:record", "args": ["old"], "trigger": "interval",
           "hours": 1}  # fmt: skip
    async with started(make_app(database_url=url)) as (_, lagging):
        async with started(make_app(database_url=url)) as (client, _):
            assert (await client.post("/scheduler/jobs", json=old, headers=AUTH)).is_success
            for name in ("a", "b", "c"):
                changed = await client.patch("/scheduler/jobs/x", json={"name": name}, headers=AUTH)
                assert changed.is_success
                await lagging.feed.reached(last_change(url))
            before = lagging.cache.entry("x")
            assert before is not None and before.job.args == ["old"]

            # The lagging process reads nothing while the job is removed and added again.
            feed = lagging.feed
            check = feed.check
            released = asyncio.Event()

            async def lagging_check() -> None:
                await released.wait()
                await check()

            monkeypatch.setattr(feed, "check", lagging_check)
            assert (await client.delete("/scheduler/jobs/x", headers=AUTH)).is_success
            new = {**old, "args": ["new"], "hours": None, "seconds": 1}
            assert (await client.post("/scheduler/jobs", json=new, headers=AUTH)).is_success
        # Only the lagging process is left; it catches up and must fire the new definition.
        monkeypatch.setattr(feed, "check", check)
        released.set()
        await feed.reached(last_change(url))
        after = lagging.cache.entry("x")
        assert after is not None and after.job.args == ["new"]
        assert after.job.version > before.job.version
        await jobs.wait_fired("new", timeout=10)
        assert [entry for entry in jobs.fired if entry["tag"] == "old"] == []
