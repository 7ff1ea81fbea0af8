"""Jobs, async views and the shared client live on ONE loop; sync code never does."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import pytest
from flask import Flask, jsonify

from asyncapp import NotRunning, http_client
from tests import jobs
from tests.conftest import AUTH, serve


def add_probe_routes(app: Flask) -> None:
    @app.get("/probe/async")
    async def probe_async() -> object:
        return jsonify(
            loop=id(asyncio.get_running_loop()),
            client=id(http_client()),
            thread=threading.get_ident(),
        )

    @app.get("/probe/sync")
    def probe_sync() -> object:
        return jsonify(thread=threading.get_ident(), name=threading.current_thread().name)


async def test_interval_task_fires_repeatedly_on_the_loop_of_async_views(
    make_app: Callable[..., Flask],
) -> None:
    jobs.reset()
    app = make_app(job_modules="tests.jobs,tests.jobs_ticking")
    add_probe_routes(app)
    async with serve(app) as client:
        runs = await jobs.wait_fired("tick", count=3)
        view = (await client.get("/probe/async")).json()
        loop = id(asyncio.get_running_loop())
    assert len({run["loop"] for run in runs}) == 1
    assert runs[0]["loop"] == view["loop"] == loop
    assert runs[0]["client"] == view["client"], "jobs and views share one httpx client"
    assert runs[0]["thread"] == view["thread"] == threading.get_ident()
    assert all(run["job_id"] == "tick" for run in runs)


async def test_sync_views_run_in_the_worker_pool_not_on_the_loop(
    make_app: Callable[..., Flask],
) -> None:
    app = make_app()
    add_probe_routes(app)
    async with serve(app) as client:
        body = (await client.get("/probe/sync")).json()
    assert body["thread"] != threading.get_ident()
    assert body["name"].startswith("asyncapp-http")


async def test_sync_job_runs_in_a_thread_with_the_app_context(
    make_app: Callable[..., Flask],
) -> None:
    jobs.reset()
    app = make_app()
    async with serve(app) as client:
        response = await client.post(
            "/scheduler/jobs",
            json={
                "id": "s",
                "func": "tests.jobs:record_sync",
                "args": ["sync"],
                "trigger": "date",
                "run_date": "2099-01-01T00:00:00+00:00",
            },
            headers=AUTH,
        )
        assert response.status_code == 200, response.text
        assert (await client.post("/scheduler/jobs/s/run", headers=AUTH)).status_code == 200
        (run,) = await jobs.wait_fired("sync")
    assert run["thread"] != threading.get_ident()
    assert run["app"] == app.name and run["job_id"] == "s"


async def test_jobs_see_the_flask_app_context(make_app: Callable[..., Flask]) -> None:
    jobs.reset()
    async with serve(make_app()) as client:
        await client.post(
            "/scheduler/jobs",
            json={
                "id": "ctx",
                "func": "tests.jobs:record",
                "args": ["ctx"],
                "trigger": "date",
                "run_date": "2099-01-01T00:00:00+00:00",
            },
            headers=AUTH,
        )
        await client.post("/scheduler/jobs/ctx/run", headers=AUTH)
        (run,) = await jobs.wait_fired("ctx")
    assert run["config_token"] == AUTH["Authorization"].split()[1]


def test_http_client_outside_a_running_app_is_a_clear_error() -> None:
    with pytest.raises(NotRunning, match="http_client"):
        http_client()
