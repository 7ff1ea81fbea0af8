"""Graceful shutdown: running jobs get the grace period, then are cancelled and recorded."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from flask import Flask
from sqlalchemy import create_engine, select

from asyncapp.store.tables import runs_table
from tests import jobs
from tests.conftest import AUTH, Server, serve, wait_until
from tests.test_cluster import marks


def all_runs(url: str) -> list[Any]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(select(runs_table)))
    finally:
        engine.dispose()


FAR = {"trigger": "date", "run_date": "2099-01-01T00:00:00+00:00"}


async def test_short_job_completes_and_long_job_is_interrupted(
    make_app: Callable[..., Flask], db_url: str
) -> None:
    jobs.reset()
    short, long_ = jobs.gate("short"), jobs.gate("long")
    async with serve(make_app(shutdown_grace=1)) as client:
        for job_id, func, args in (
            ("short", "tests.jobs:nap", ["short", 0.3]),
            ("long", "tests.jobs:hold", ["long"]),
        ):
            response = await client.post(
                "/scheduler/jobs",
                json={"id": job_id, "func": func, "args": args, **FAR},
                headers=AUTH,
            )
            assert response.status_code == 200, response.text
            assert (await client.post(f"/scheduler/jobs/{job_id}/run", headers=AUTH)).is_success
        await short.started.wait()
        await long_.started.wait()
    # Shutdown has returned: the short job finished inside the grace period.
    assert [run["tag"] for run in jobs.fired] == ["short"]

    async with serve(make_app()) as client:
        runs = (await client.get("/scheduler/runs", headers=AUTH)).json()["runs"]
    status = {run["job_id"]: run["status"] for run in runs}
    assert status == {"short": "success", "long": "interrupted"}
    interrupted = next(run for run in runs if run["job_id"] == "long")
    assert interrupted["ended_at"] is not None


def test_sigterm_with_100_runs_in_flight_finishes_or_interrupts_each(
    hypercorn_server: Callable[..., Server], tmp_path: Path
) -> None:
    """Runs that can end within the grace end; the others are interrupted; none stays running."""
    url = f"sqlite:///{tmp_path / 'term.db'}"
    marks_path = tmp_path / "marks"
    server = hypercorn_server(ASYNCAPP_DATABASE_URL=url, ASYNCAPP_SHUTDOWN_GRACE="2")
    at = (datetime.now(UTC) + timedelta(seconds=2)).isoformat()
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=10) as client:
        for i in range(100):
            seconds = 0.5 if i % 2 else 60  # half end within the grace, half cannot
            body = {"id": f"j{i}", "func": "tests.jobs:mark", "trigger": "date", "run_date": at,
                    "args": [str(marks_path)], "kwargs": {"seconds": seconds}}  # fmt: skip
            assert client.post("/scheduler/jobs", json=body).status_code == 200
    wait_until(lambda: len(marks(marks_path)) == 100, what="100 runs in flight")
    assert server.stop() == 0
    found = {r.job_id: r.status for r in all_runs(url)}
    assert len(found) == 100
    assert {found[f"j{i}"] for i in range(1, 100, 2)} == {"success"}
    assert {found[f"j{i}"] for i in range(0, 100, 2)} == {"interrupted"}
