"""The Python API for jobs (``asyncapp.jobs`` / ``sync_jobs``): the service's validation,
errors and change history, from async code on the server loop, from sync views' threads,
from async views' greenlets, and from scripts with no server in the process."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from flask import Flask, request

from asyncapp import (
    InvalidJob,
    Job,
    JobExists,
    JobNotFound,
    JobRun,
    Jobs,
    SyncJobs,
    UnknownFunction,
    jobs,
    sync_jobs,
)
from tests import jobs as test_jobs
from tests.conftest import AUTH, serve

pytestmark = pytest.mark.timeout(60)


async def test_the_async_api_steers_jobs_on_the_running_server(
    make_app: Callable[..., Flask],
) -> None:
    test_jobs.reset()
    app = make_app()
    async with serve(app) as client:
        with app.app_context():
            added = await jobs.add(
                test_jobs.record, "interval", id="coded", args=("coded",), hours=1, timeout=5
            )
            assert isinstance(added, Job)
            assert added.trigger["type"] == "interval" and added.trigger["hours"] == 1
            assert added.args == ("coded",) and added.timeout == 5
            assert added.next_run_time is not None and added.next_run_time.tzinfo is not None

            paused = await jobs.pause("coded", note="upstream down")
            assert (paused.paused, paused.note) == (True, "upstream down")
            assert paused.next_run_time is None
            assert (await jobs.resume("coded")).paused is False
            moved = await jobs.modify("coded", trigger="cron", hour=3, timezone="Europe/Helsinki")
            assert moved.trigger["type"] == "cron" and moved.trigger["hour"] == "3"
            times = await jobs.upcoming("coded", count=3)
            assert len(times) == 3 and all(t.utcoffset() is not None for t in times)
            assert [job.id for job in await jobs.list()] == ["coded"]

            run = await jobs.run_now("coded")
            assert isinstance(run, JobRun) and run.job_id == "coded"
            await test_jobs.wait_fired("coded")

            await jobs.remove("coded")
            assert await jobs.find("coded") is None
        history = await client.get("/scheduler/jobs/coded/changes", headers=AUTH)
    actions = [(c["action"], c["source"]) for c in reversed(history.json()["changes"])]
    assert actions == [
        ("add", "code"),
        ("pause", "code"),
        ("resume", "code"),
        ("modify", "code"),
        ("run", "code"),
        ("remove", "code"),
    ]


async def test_bad_input_raises_the_services_errors(make_app: Callable[..., Flask]) -> None:
    app = make_app()
    bound = Jobs(app)
    async with serve(app):
        with pytest.raises(UnknownFunction):
            await bound.add("tests.jobs:not_a_task", "interval", hours=1)
        with pytest.raises(InvalidJob) as caught:
            await bound.add(test_jobs.record, "interval", args=["x"], hours=1, hour=3)
        [error] = caught.value.errors
        assert error == {"field": "hour", "message": "does not apply to an interval trigger"}
        with pytest.raises(InvalidJob) as caught:
            await bound.add(test_jobs.record, "interval", args=[], hours=1)
        assert caught.value.errors[0]["field"] == "args"
        await bound.add(test_jobs.record, "interval", id="taken", args=["x"], hours=1)
        with pytest.raises(JobExists):
            await bound.add(test_jobs.record, "interval", id="taken", args=["x"], hours=1)
        with pytest.raises(JobNotFound):
            await bound.pause("missing")
        with pytest.raises(InvalidJob):
            await bound.runs(status="exploded")


async def test_the_sync_api_works_in_sync_views_and_hooks_and_refuses_async_bodies(
    make_app: Callable[..., Flask],
) -> None:
    app = make_app()

    @app.post("/sync-pause/<job_id>")
    def sync_pause(job_id: str) -> object:  # a thread of the pool
        return {"paused": sync_jobs.pause(job_id, note=request.args.get("note")).paused}

    @app.post("/hooked-resume/<job_id>")
    async def hooked_resume(job_id: str) -> object:  # awaited on the loop
        return {"paused": (await jobs.get(job_id)).paused}

    @app.before_request
    def resume_in_a_hook() -> None:  # sync, in the greenlet of an async view's request
        if request.path.startswith("/hooked-resume/"):
            sync_jobs.resume(request.path.rsplit("/", 1)[1])

    @app.post("/blocking/<job_id>")
    async def blocking(job_id: str) -> object:  # a sync call in an async body: refused
        try:
            sync_jobs.get(job_id)
        except RuntimeError as exc:
            return {"refused": str(exc)}
        return {"refused": None}

    async with serve(app) as client:
        with app.app_context():
            await jobs.add(test_jobs.record, "interval", id="viewed", args=["v"], hours=1)
        answer = await client.post("/sync-pause/viewed?note=from+a+view")
        assert answer.json() == {"paused": True}
        with app.app_context():
            assert (await jobs.get("viewed")).note == "from a view"
        answer = await client.post("/hooked-resume/viewed")
        assert answer.json() == {"paused": False}
        refused = (await client.post("/blocking/viewed")).json()["refused"]
        assert "await asyncapp.jobs instead" in refused
        with app.app_context(), pytest.raises(RuntimeError, match=r"await asyncapp\.jobs"):
            sync_jobs.list()  # on the loop's thread outside a request: would deadlock


def test_a_script_steers_the_database_without_a_server(make_app: Callable[..., Flask]) -> None:
    test_jobs.reset()
    script = SyncJobs(make_app())
    soon = datetime.now(UTC) + timedelta(days=1)
    added = script.add(test_jobs.record, "date", id="scripted", args=["scripted"], run_date=soon)
    assert added.next_run_time == soon
    assert script.pause("scripted", note="by a script").paused
    assert [job.id for job in script.list()] == ["scripted"]
    run = script.run_now("scripted")  # runs here, and waits for it
    assert run.status == "success" and run.ended_at is not None
    assert [r.id for r in script.runs("scripted")] == [run.id]
    script.remove("scripted")
    with pytest.raises(JobNotFound):
        script.get("scripted")


async def test_the_sync_api_refuses_a_running_loop_outside_requests(
    make_app: Callable[..., Flask],
) -> None:
    app = make_app()
    with pytest.raises(RuntimeError, match=r"await asyncapp\.jobs"):
        SyncJobs(app).list()  # this test runs on a loop: waiting here would block it
