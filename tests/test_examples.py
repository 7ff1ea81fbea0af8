"""The default app's jobs: the hourly task and the uptime check."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable

import pytest
from aiohttp import web
from flask import Flask

from tests.conftest import AUTH, loopback_site, serve


@pytest.fixture
async def sites() -> AsyncIterator[str]:
    """A real server on loopback: /up answers 200, /down answers 503."""

    async def up(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def down(request: web.Request) -> web.Response:
        return web.Response(status=503)

    async with loopback_site({"/up": up, "/down": down}) as url:
        yield url


async def finished(app: Flask) -> None:
    """Wait until the runs in progress have ended and their results are written."""
    runtime = app.extensions["asyncapp"].runtime
    assert await runtime.dispatcher.drain(grace=10) == 0
    assert await runtime.recorder.flush(10)


async def test_default_jobs_are_the_hourly_task_only(make_app: Callable[..., Flask]) -> None:
    async with serve(make_app(job_modules="asyncapp.examples")) as client:
        jobs = (await client.get("/scheduler/jobs", headers=AUTH)).json()
    assert [(job["id"], job["trigger"], job["hours"]) for job in jobs] == [
        ("hourly_task", "interval", 1)
    ]


async def test_hourly_task_logs_the_time(
    make_app: Callable[..., Flask], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="asyncapp")
    app = make_app(job_modules="asyncapp.examples")
    async with serve(app) as client:
        await client.post("/scheduler/jobs/hourly_task/run", headers=AUTH)
        await finished(app)
        runs = (await client.get("/scheduler/jobs/hourly_task/runs", headers=AUTH)).json()
    assert [run["status"] for run in runs["runs"]] == ["success"]
    assert any("Task execution time:" in record.getMessage() for record in caplog.records)


async def test_uptime_check_logs_status_and_latency_and_fails_on_a_down_url(
    make_app: Callable[..., Flask], sites: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="asyncapp")
    app = make_app(job_modules="asyncapp.examples", uptime_urls=f"{sites}/up,{sites}/down")
    async with serve(app) as client:
        job = (await client.get("/scheduler/jobs/uptime_check", headers=AUTH)).json()
        assert job["trigger"] == "interval" and job["minutes"] == 1
        await client.post("/scheduler/jobs/uptime_check/run", headers=AUTH)
        await finished(app)
        runs = (await client.get("/scheduler/jobs/uptime_check/runs", headers=AUTH)).json()
    (run,) = runs["runs"]
    assert run["status"] == "error"
    assert run["error_message"] == f"{sites}/down: HTTP 503"
    lines = [record.getMessage() for record in caplog.records]
    assert any(
        line.startswith(f"uptime {sites}/up: 200 in ") and line.endswith(" ms") for line in lines
    )
    assert any(line.startswith(f"uptime {sites}/down: 503 in ") for line in lines)
