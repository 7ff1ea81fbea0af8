"""The claim lead: a scheduled run is claimed ``ASYNCAPP_CLAIM_LEAD`` ahead of its time
and starts at that time; a removal or pause inside the lead is honoured at the start."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from flask import Flask

from tests import jobs
from tests.conftest import AUTH, serve, settled

#: Long enough to act between the claim and the start over the API, on a loaded machine.
LEAD = 3.0


async def claimed_run(client: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    """The run of ``job_id`` once it is claimed (polls the history, ~20 times a second)."""
    for _ in range(400):
        found = await runs_of(client, job_id)
        if found:
            return found[0]
        await asyncio.sleep(0.05)
    raise AssertionError(f"no run of {job_id} was claimed")


async def runs_of(client: httpx.AsyncClient, job_id: str) -> list[dict[str, Any]]:
    page = (await client.get("/scheduler/runs", headers=AUTH)).json()
    return [run for run in page["runs"] if run["job_id"] == job_id]


async def add_soon(client: httpx.AsyncClient, job_id: str, tag: str) -> datetime:
    at = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=LEAD + 2)
    body = {"id": job_id, "func": "tests.jobs:record", "args": [tag],
            "trigger": "interval", "seconds": 3600, "start_date": at.isoformat()}  # fmt: skip
    assert (await client.post("/scheduler/jobs", json=body, headers=AUTH)).is_success
    return at


@pytest.mark.timeout(60)
async def test_a_run_claimed_ahead_starts_at_its_time(make_app: Callable[..., Flask]) -> None:
    jobs.reset()
    app = make_app(claim_lead=LEAD)
    async with serve(app) as client:
        at = await add_soon(client, "ahead", "ahead")
        run = await claimed_run(client, "ahead")
        claimed_at = datetime.now(UTC)
        assert run["status"] == "running"
        assert datetime.fromisoformat(run["scheduled_for"]) == at
        assert claimed_at < at, "claimed before its time"
        assert not [entry for entry in jobs.fired if entry["tag"] == "ahead"]
        await jobs.wait_fired("ahead", timeout=LEAD + 10)
        started = datetime.now(UTC)
        await settled(app.extensions["asyncapp"].runtime)
        (ended,) = await runs_of(client, "ahead")
    assert started >= at, "the body started at its time, not at the claim"
    assert ended["status"] == "success"
    assert datetime.fromisoformat(ended["started_at"]) >= at


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("change", "reason"),
    [("pause", "paused"), ("remove", "removed"), ("scheduler", "scheduler_paused")],
)
async def test_a_change_inside_the_lead_is_honoured_at_the_start(
    make_app: Callable[..., Flask], change: str, reason: str
) -> None:
    jobs.reset()
    app = make_app(claim_lead=LEAD)
    async with serve(app) as client:
        at = await add_soon(client, "changed", "changed")
        run = await claimed_run(client, "changed")
        assert run["status"] == "running"
        if change == "pause":
            response = await client.post("/scheduler/jobs/changed/pause", headers=AUTH)
        elif change == "remove":
            response = await client.delete("/scheduler/jobs/changed", headers=AUTH)
        else:
            response = await client.post("/scheduler/pause", headers=AUTH)
        assert response.is_success, response.text
        assert datetime.now(UTC) < at, "changed inside the lead"
        runtime = app.extensions["asyncapp"].runtime
        for _ in range(400):
            if (await runs_of(client, "changed"))[0]["status"] != "running":
                break
            await asyncio.sleep(0.05)
        await settled(runtime)
        (ended,) = await runs_of(client, "changed")
    assert (ended["status"], ended["reason"]) == ("missed", reason)
    assert ended["id"] == run["id"], "the claimed run itself says why it did not run"
    assert datetime.now(UTC) >= at
    assert not [entry for entry in jobs.fired if entry["tag"] == "changed"], "the body never ran"
