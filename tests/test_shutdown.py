"""Graceful shutdown: running jobs get the grace period, then are cancelled and recorded."""

from __future__ import annotations

from collections.abc import Callable

from flask import Flask

from tests import jobs
from tests.conftest import AUTH, serve

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
