"""JobService.job_page: jobs paged and filtered in the database, with their last run."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import update

from asyncapp.app import extension
from asyncapp.errors import InvalidJob
from asyncapp.model.change import Actor
from asyncapp.service.jobs import JobService
from asyncapp.store.tables import jobs_table
from tests.conftest import serve

pytestmark = pytest.mark.timeout(30)

API = Actor("api", "127.0.0.1")


def spec(job_id: str, func: str = "tests.jobs:record", **kwargs: object) -> dict[str, object]:
    return {"id": job_id, "func": func, "kwargs": kwargs or {"tag": job_id},
            "trigger": {"type": "interval", "hours": 1}}  # fmt: skip


async def wait_runs(service: JobService, job_id: str, count: int) -> None:
    """Until ``count`` runs of ``job_id`` have ended (the recorder writes them a little
    after they end; there is no event to await)."""
    for _ in range(250):
        runs = (await service.list_runs(job_id))["runs"]
        if sum(run["status"] not in ("running", "waiting") for run in runs) >= count:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{count} runs of {job_id} did not end")


async def test_filters_search_and_last_run(make_app: Callable[..., Flask]) -> None:
    app = make_app()
    async with serve(app):
        service = extension(app).service()
        for job_id in ("alpha", "beta_1", "beta%2", "gamma"):
            await service.add_job(spec(job_id), API)
        await service.add_job(spec("failing", "tests.jobs:fail", message="no"), API)
        await service.pause_job("gamma", API, "later")
        # A job whose function is gone from the code: broken.
        await service.add_job(spec("gone"), API)
        await service.store.db.write(
            lambda conn: conn.execute(
                update(jobs_table).where(jobs_table.c.id == "gone").values(func="old:gone")
            )
        )
        await service.run_job("failing", API)
        await service.run_job("alpha", API)
        await wait_runs(service, "failing", 1)
        await wait_runs(service, "alpha", 1)

        async def ids(**query: Any) -> list[str]:
            page = await service.job_page(**query)
            return [job["id"] for job in page["jobs"]]

        assert set(await ids()) == {"alpha", "beta_1", "beta%2", "gamma", "failing", "gone"}
        assert (await ids())[-1] == "gamma"  # paused last, as in the API's listing
        assert await ids(search="BETA") == ["beta_1", "beta%2"]
        assert await ids(search="%") == ["beta%2"]  # LIKE wildcards are matched literally
        assert await ids(search="a_1") == ["beta_1"]
        assert await ids(state="paused") == ["gamma"]
        assert await ids(state="broken") == ["gone"]
        assert await ids(state="failing") == ["failing"]
        assert "gone" not in await ids(state="scheduled")
        assert "gamma" not in await ids(state="scheduled")

        page = await service.job_page(limit=2, offset=1)
        assert page["total"] == 6 and len(page["jobs"]) == 2 and page["offset"] == 1
        by_id = {job["id"]: job for job in (await service.job_page())["jobs"]}
        assert by_id["failing"]["last_run"]["status"] == "error"
        assert by_id["alpha"]["last_run"]["status"] == "success"
        assert by_id["beta_1"]["last_run"] is None
        assert by_id["gone"]["broken"] is True and by_id["gamma"]["note"] == "later"

        with pytest.raises(InvalidJob):
            await service.job_page(state="sleeping")  # type: ignore[arg-type]
        with pytest.raises(InvalidJob):
            await service.job_page(limit=0)


async def test_the_last_run_is_the_latest_scheduled_time(make_app: Callable[..., Flask]) -> None:
    app = make_app()
    async with serve(app):
        service = extension(app).service()
        await service.add_job(spec("poll"), API)
        for _ in range(3):
            await service.run_job("poll", API)
            await asyncio.sleep(0.01)
        await wait_runs(service, "poll", 3)
        newest = (await service.list_runs("poll", limit=1))["runs"][0]
        listed = (await service.job_page())["jobs"][0]["last_run"]
        assert listed["id"] == newest["id"]


async def test_runs_in_a_time_window(make_app: Callable[..., Flask]) -> None:
    app = make_app()
    async with serve(app):
        service = extension(app).service()
        await service.add_job(spec("poll"), API)
        await service.run_job("poll", API)
        await wait_runs(service, "poll", 1)
        now = datetime.now(UTC)
        assert (await service.list_runs(since=now - timedelta(hours=1)))["total"] == 1
        assert (await service.list_runs(since=now + timedelta(seconds=1)))["total"] == 0
        assert (await service.list_runs(until=now - timedelta(hours=1)))["total"] == 0


async def test_processes_without_reading_the_jobs(make_app: Callable[..., Flask]) -> None:
    app = make_app()
    async with serve(app):
        service = extension(app).service()
        cluster = await service.processes()
        info = await service.scheduler_info()
        assert cluster["state"] == "running"
        assert cluster["process"]["id"] == info["process"]["id"]
        assert [p["id"] for p in cluster["processes"]] == [p["id"] for p in info["processes"]]
        assert cluster["processes"][0]["heartbeat_age"] >= 0
