"""``asyncapp_runs_total``: every run that ends is counted once, with the status its
history keeps, wherever its end is decided: the runner, a ``cancel_other`` claim,
the reaping of a dead process's runs, or the drain at shutdown."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from flask import Flask
from prometheus_client import REGISTRY
from sqlalchemy import insert

from asyncapp.runtime import Runtime
from asyncapp.store.tables import runs_table
from tests import jobs
from tests.conftest import AUTH, serve, settled

pytestmark = pytest.mark.timeout(30)

HOLD = "tests.jobs:hold"
FAR = {"trigger": "date", "run_date": "2099-01-01T00:00:00+00:00"}
STATUSES = ("success", "error", "timeout", "interrupted", "unknown")


def counted(func: str) -> Counter[str]:
    """``asyncapp_runs_total`` of ``func`` by status, in this process."""
    found: Counter[str] = Counter()
    for status in STATUSES:
        value = REGISTRY.get_sample_value("asyncapp_runs_total", {"func": func, "status": status})
        found[status] = int(value or 0)
    return found


async def history(client: httpx.AsyncClient, job_id: str) -> Counter[str]:
    runs = (await client.get(f"/scheduler/jobs/{job_id}/runs", headers=AUTH)).json()["runs"]
    return Counter(run["status"] for run in runs if run["status"] in STATUSES)


async def add(client: httpx.AsyncClient, **body: Any) -> None:
    response = await client.post("/scheduler/jobs", json=body, headers=AUTH)
    assert response.status_code == 200, response.text


async def test_runs_cancelled_by_cancel_other_are_counted(make_app: Callable[..., Flask]) -> None:
    jobs.reset()
    gate = jobs.gate("co")
    app = make_app()
    runtime: Runtime = app.extensions["asyncapp"].runtime
    before = counted(HOLD)
    every = {"trigger": "interval", "seconds": 0.3, "overlap": "cancel_other"}
    async with serve(app) as client:
        await add(client, id="co", func=HOLD, args=["co"], **every)
        for _ in range(4):  # each run waits until the next one cancels it
            await gate.started.wait()
            gate.started.clear()
        paused = await client.post("/scheduler/jobs/co/pause", headers=AUTH)
        assert paused.status_code == 200
        gate.release.set()  # the run in progress now ends by itself
        await jobs.wait_fired("co")
        await settled(runtime)
        kept = await history(client, "co")
    assert kept["interrupted"] >= 3 and kept["success"] == 1, kept
    assert counted(HOLD) - before == kept


async def test_runs_of_a_dead_process_reaped_here_are_counted(
    make_app: Callable[..., Flask],
) -> None:
    jobs.reset()
    # A process reaps others only once its own heartbeat has been current for a
    # whole process timeout: a short one keeps the test short.
    app = make_app(process_timeout=1, heartbeat_interval=0.1)
    runtime: Runtime = app.extensions["asyncapp"].runtime
    before = counted(HOLD)
    async with serve(app) as client:
        await add(client, id="orphan", func=HOLD, args=["orphan"], **FAR)
        now = datetime.now(UTC)
        row = {"job_id": "orphan", "scheduled_for": now, "started_at": now, "status": "running"}
        await runtime.store.db.write(
            lambda conn: conn.execute(
                insert(runs_table).values(
                    id="r" * 32, node="gone", process_id="dead", attempt=1, **row
                )
            )
        )
        # The heartbeat's watch finds the run of a process with no heartbeat row.
        deadline = asyncio.get_running_loop().time() + 10
        while not await history(client, "orphan"):
            assert asyncio.get_running_loop().time() < deadline, "the orphan was not reaped"
            await asyncio.sleep(0.1)  # the watch runs every heartbeat interval
        await runtime.membership.watch()  # a second look finds nothing more to end
        kept = await history(client, "orphan")
    assert kept == Counter({"unknown": 1})
    assert counted(HOLD) - before == kept


async def test_runs_cancelled_by_the_drain_at_shutdown_are_counted(
    make_app: Callable[..., Flask],
) -> None:
    jobs.reset()
    gate = jobs.gate("drained")
    app = make_app(shutdown_grace=0.1)
    before = counted(HOLD)
    async with serve(app) as client:
        await add(client, id="drained", func=HOLD, args=["drained"], **FAR)
        assert (await client.post("/scheduler/jobs/drained/run", headers=AUTH)).status_code == 200
        await gate.started.wait()
    # Stopped: the run was cancelled after the grace and its end written on the way out.
    async with serve(make_app()) as client:
        kept = await history(client, "drained")
    assert kept == Counter({"interrupted": 1})
    assert counted(HOLD) - before == kept
