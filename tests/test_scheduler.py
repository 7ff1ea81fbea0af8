"""What the scheduler promises about time: a time too late to start is recorded missed,
not run; overdue times coalesce into one run; a paused job starts nothing more.

To make times overdue the tests hold the event loop with ``time.sleep``, which is the
server's loop too (the app runs in process): while it is held nothing can claim a time,
as when a job blocks the loop in production.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from flask import Flask

from asyncapp.runtime import Runtime
from tests import jobs
from tests.conftest import AUTH, serve, settled

pytestmark = pytest.mark.timeout(30)

RECORD = "tests.jobs:record"


@pytest.fixture
async def served(
    make_app: Callable[..., Flask],
) -> AsyncIterator[tuple[httpx.AsyncClient, Runtime]]:
    jobs.reset()
    # The default misfire grace is the shortest allowed, so a test waits little for it.
    app = make_app(misfire_grace_time=1)
    async with serve(app) as client:
        client.headers.update(AUTH)
        yield client, app.extensions["asyncapp"].runtime


async def add(client: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    response = await client.post("/scheduler/jobs", json=body)
    assert response.status_code == 200, response.text
    job: dict[str, Any] = response.json()
    return job


async def history(client: httpx.AsyncClient, job_id: str) -> list[dict[str, Any]]:
    """The runs of ``job_id``, oldest scheduled time first."""
    page = (await client.get(f"/scheduler/jobs/{job_id}/runs", params={"limit": 500})).json()
    return sorted(page["runs"], key=lambda run: at(run["scheduled_for"]))


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


def hold_the_loop_until(moment: datetime) -> None:
    """Block this thread, the server loop's, until ``moment`` (UTC)."""
    time.sleep(max(0.0, (moment - datetime.now(UTC)).total_seconds()))


def ahead(seconds: float) -> datetime:
    """A moment ``seconds`` from now; the test must reach its hold well before it."""
    return datetime.now(UTC) + timedelta(seconds=seconds)


def assert_before(moment: datetime) -> None:
    margin = (moment - datetime.now(UTC)).total_seconds()
    assert margin > 0.5, f"the request took too long to hold the loop in time ({margin:.2f} s)"


async def test_a_time_later_than_the_misfire_grace_is_missed_late_and_not_run(
    served: tuple[httpx.AsyncClient, Runtime],
) -> None:
    client, runtime = served
    due = ahead(1.5)
    job = await add(
        client, id="late", func=RECORD, args=["late"], trigger="date", run_date=due.isoformat()
    )
    assert job["misfire_grace_time"] == 1, "the default comes from ASYNCAPP_MISFIRE_GRACE_TIME"
    assert_before(due)

    hold_the_loop_until(due + timedelta(seconds=1.5))  # 1.5 s late, beyond the 1 s grace
    # A job due after the hold is claimed after the late time: once it ran, that was recorded.
    await add(client, id="after", func=RECORD, args=["after"])
    await jobs.wait_fired("after")
    await settled(runtime)

    [run] = await history(client, "late")
    assert (run["status"], run["reason"]) == ("missed", "late")
    assert at(run["scheduled_for"]) == due
    assert run["started_at"] is None
    assert [entry for entry in jobs.fired if entry["tag"] == "late"] == []


async def test_overdue_times_of_a_coalescing_job_make_one_run(
    served: tuple[httpx.AsyncClient, Runtime],
) -> None:
    client, runtime = served
    start = ahead(1.5)
    job = await add(
        client,
        id="co",
        func=RECORD,
        args=["co"],
        trigger="interval",
        seconds=0.3,
        start_date=start.isoformat(),
        end_date=(start + timedelta(seconds=1)).isoformat(),  # four times: +0, 0.3, 0.6, 0.9
        misfire_grace_time=60,
    )
    assert job["coalesce"] is True, "the default comes from ASYNCAPP_COALESCE"
    assert_before(start)

    hold_the_loop_until(start + timedelta(seconds=1.2))  # all four are overdue, none too late
    [entry] = await jobs.wait_fired("co")
    await settled(runtime)

    times = [start + timedelta(seconds=0.3 * k) for k in range(4)]
    found = await history(client, "co")
    assert [(at(r["scheduled_for"]), r["status"], r["reason"]) for r in found] == [
        (times[0], "missed", "coalesced"),
        (times[1], "missed", "coalesced"),
        (times[2], "missed", "coalesced"),
        (times[3], "success", None),
    ]
    assert [e for e in jobs.fired if e["tag"] == "co"] == [entry]


async def test_a_paused_job_starts_no_run_after_the_pause_answered(
    served: tuple[httpx.AsyncClient, Runtime],
) -> None:
    client, runtime = served
    await add(client, id="fast", func=RECORD, args=["fast"], trigger="interval", seconds=0.2)
    await jobs.wait_fired("fast", 3)

    response = await client.post("/scheduler/jobs/fast/pause")
    answered = datetime.now(UTC)
    assert response.status_code == 200, response.text
    assert response.json()["paused"] is True and response.json()["next_run_time"] is None

    # Nothing can be awaited for a run that must not happen: watch for five periods.
    await asyncio.sleep(1.0)
    await settled(runtime)
    found = await history(client, "fast")
    assert len(found) >= 3
    assert [r for r in found if at(r["started_at"]) > answered] == []
    assert [r for r in found if at(r["scheduled_for"]) > answered] == []
    assert {r["status"] for r in found} == {"success"}
