"""The extension on a Flask app of your own: ``AsyncApp(app)`` or ``init_app``, served
through ``to_asgi``, keeps the app's routes and adds the probes, the API and the jobs."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest
import sqlalchemy
from flask import Flask, current_app

from asyncapp import AsyncApp
from asyncapp.asgi import to_asgi
from tests import jobs
from tests.conftest import AUTH, app_config, serve

pytestmark = pytest.mark.timeout(30)


def attach_at_construction(app: Flask) -> AsyncApp:
    return AsyncApp(app)


def attach_later(app: Flask) -> AsyncApp:
    ext = AsyncApp()
    ext.init_app(app)
    return ext


@pytest.mark.parametrize("attach", [attach_at_construction, attach_later])
async def test_an_app_of_your_own_keeps_its_routes_and_gets_the_api(
    db_url: str, attach: Callable[[Flask], AsyncApp]
) -> None:
    jobs.reset()
    own = Flask("own_app", static_folder=None)
    own.config.update(app_config(db_url))

    @own.get("/hello")
    async def hello() -> object:
        return {"hello": current_app.name}

    @own.get("/plain")
    def plain() -> str:
        return "plain text"

    ext = attach(own)
    assert own.extensions["asyncapp"] is ext
    assert to_asgi(own).ext is ext, "to_asgi uses the extension already attached"

    async with serve(own) as client:
        assert ext.runtime.started
        assert (await client.get("/hello")).json() == {"hello": "own_app"}
        plain_answer = await client.get("/plain")
        assert (plain_answer.status_code, plain_answer.text) == (200, "plain text")
        assert (await client.get("/healthz")).json()["status"] == "ok"
        assert (await client.get("/readyz")).status_code == 200
        assert (await client.get("/scheduler/jobs", headers=AUTH)).json() == []
        body = {"id": "own", "func": "tests.jobs:record", "args": ["own"]}
        added = await client.post("/scheduler/jobs", json=body, headers=AUTH)
        assert added.status_code == 200, added.text
        [entry] = await jobs.wait_fired("own")
        assert (await client.get("/scheduler/jobs", headers=AUTH)).status_code == 200
    assert entry["app"] == "own_app", "the job ran in the app context of the app of your own"
    assert not ext.runtime.started


async def test_jobs_left_in_an_apscheduler_store_are_named_at_startup(
    db_url: str, make_app: Callable[[], Flask], caplog: pytest.LogCaptureFixture
) -> None:
    """An app keeping its old database URL is told its pickled jobs are not read."""
    engine = sqlalchemy.create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(
            sqlalchemy.text(
                "CREATE TABLE apscheduler_jobs "
                "(id VARCHAR(191) PRIMARY KEY, next_run_time FLOAT, job_state BLOB NOT NULL)"
            )
        )
        conn.execute(sqlalchemy.text("INSERT INTO apscheduler_jobs VALUES ('old', 1.0, x'80')"))
    engine.dispose()
    caplog.set_level(logging.WARNING, logger="asyncapp")
    async with serve(make_app()):
        pass
    [warning] = [r.getMessage() for r in caplog.records if "apscheduler_jobs" in r.getMessage()]
    assert warning.startswith("1 jobs of APScheduler's job store (table apscheduler_jobs)")
    assert "docs/migrating.md" in warning
