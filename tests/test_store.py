"""Jobs in the database on SQLite and PostgreSQL: JSON rows, restarts, broken rows,
code-declared jobs, and changes made elsewhere reaching a running app's cache."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Connection

from asyncapp.model.change import Actor
from asyncapp.model.tasks import registry
from asyncapp.runtime import Runtime
from tests import jobs
from tests.conftest import AUTH, serve

SPEC = {
    "id": "keep",
    "func": "tests.jobs:record",
    "args": ["x"],
    "trigger": "interval",
    "minutes": 5,
}
API = Actor("api", "test")


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest, db_url: str) -> str:
    """The database URL of this test: a temp SQLite file or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        return db_url
    return str(request.getfixturevalue("pg_url"))


@contextlib.contextmanager
def raw(url: str) -> Iterator[Connection]:
    """A transaction on the database, beside asyncapp (as another program would)."""
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            yield conn
    finally:
        engine.dispose()


def stored(url: str) -> dict[str, Any]:
    """Every row of ``asyncapp_jobs`` by id, as the database holds it."""
    with raw(url) as conn:
        return {
            row.id: row
            for row in conn.execute(
                text("SELECT id, func, next_run_time, data, version FROM asyncapp_jobs")
            )
        }


def last_change(url: str) -> int:
    with raw(url) as conn:
        return int(conn.execute(text("SELECT max(id) FROM asyncapp_changes")).scalar_one())


@contextlib.asynccontextmanager
async def started(flask_app: Flask) -> AsyncIterator[tuple[Any, Runtime]]:
    async with serve(flask_app) as client:
        yield client, flask_app.extensions["asyncapp"].runtime


def as_time(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


# -- rows are JSON -------------------------------------------------------------------


async def test_job_is_stored_as_json_not_pickle(url: str, make_app: Callable[..., Flask]) -> None:
    async with started(make_app(database_url=url)) as (client, _):
        response = await client.post("/scheduler/jobs", json={**SPEC, "kwargs": {}}, headers=AUTH)
        assert response.status_code == 200, response.text
        job = response.json()

    row = stored(url)["keep"]
    assert isinstance(row.data, str)
    data = json.loads(row.data)  # JSON text: a pickle would not parse
    assert row.func == "tests.jobs:record"
    assert row.version == 1
    assert data["args"] == ["x"]
    assert data["kwargs"] == {}
    assert data["name"] == "keep"
    assert data["trigger"]["type"] == "interval"
    assert data["trigger"]["minutes"] == 5
    assert data["trigger"]["timezone"] == "UTC"
    assert row.next_run_time == pytest.approx(as_time(job["next_run_time"]).timestamp(), abs=1e-6)


async def test_job_survives_a_restart_unchanged(url: str, make_app: Callable[..., Flask]) -> None:
    async with started(make_app(database_url=url)) as (client, _):
        added = (await client.post("/scheduler/jobs", json=SPEC, headers=AUTH)).json()

    async with started(make_app(database_url=url)) as (client, runtime):
        response = await client.get("/scheduler/jobs/keep", headers=AUTH)
        assert response.status_code == 200, response.text
        again = response.json()
        runs = await runtime.service.list_runs(job_id="keep")
        entry = runtime.cache.entry("keep")

    assert again == added  # same trigger, args, options, next run; nothing recomputed
    assert entry is not None and entry.next_run_time == as_time(added["next_run_time"])
    assert runs["total"] == 0  # five minutes away: restarting did not fire it


async def test_paused_job_stays_paused_across_restarts(
    url: str, make_app: Callable[..., Flask]
) -> None:
    async with started(make_app(database_url=url)) as (client, _):
        assert (await client.post("/scheduler/jobs", json=SPEC, headers=AUTH)).is_success
        paused = await client.post(
            "/scheduler/jobs/keep/pause", json={"note": "upstream down"}, headers=AUTH
        )
        assert paused.json()["paused"] is True
    assert stored(url)["keep"].next_run_time is None

    for _ in range(2):
        async with started(make_app(database_url=url)) as (_, runtime):
            job = await runtime.service.get_job("keep")
            assert job["paused"] is True
            assert job["note"] == "upstream down"
            assert job["next_run_time"] is None
            assert job["minutes"] == 5
    assert stored(url)["keep"].next_run_time is None


# -- rows naming unregistered functions ------------------------------------------------


def insert_row(conn: Connection, job_id: str, func: str, data: dict[str, Any], due: float) -> None:
    """What another program does: add a job row and a change saying so."""
    conn.execute(
        text(
            "INSERT INTO asyncapp_jobs (id, func, next_run_time, data, version, max_instances) "
            "VALUES (:id, :func, :due, :data, 1, 1)"
        ),
        {"id": job_id, "func": func, "due": due, "data": json.dumps(data)},
    )
    conn.execute(
        text(
            "INSERT INTO asyncapp_changes (at, job_id, action, source, detail) "
            "VALUES (:at, :id, 'add', 'api', '{}')"
        ),
        {"at": datetime.now(UTC), "id": job_id},
    )


async def test_row_with_unregistered_function_is_kept_reported_and_never_run(
    url: str, make_app: Callable[..., Flask], tmp_path: Path
) -> None:
    jobs.reset()
    marker = tmp_path / "pwned"
    data = {
        "name": "evil",
        "args": [f"touch {marker}"],
        "kwargs": {},
        "trigger": {"type": "interval", "seconds": 1, "timezone": "UTC"},
        "misfire_grace_time": 60,
        "coalesce": True,
    }

    async with started(make_app(database_url=url)) as (client, runtime):
        with raw(url) as conn:
            insert_row(conn, "evil", "os:system", data, time.time() - 1)
        await runtime.feed.reached(last_change(url))
        assert "evil" in runtime.cache.broken
        job = await runtime.service.get_job("evil")
        assert job["broken"] is True
        assert job["func"] == "os:system"
        assert job["args"] == [f"touch {marker}"]
        # A due job that does run, to show the scheduler was firing meanwhile.
        sentinel = {"id": "sentinel", "func": "tests.jobs:record", "args": ["sentinel"]}
        assert (await client.post("/scheduler/jobs", json=sentinel, headers=AUTH)).is_success
        await jobs.wait_fired("sentinel")
        listed = (await client.get("/scheduler/jobs", headers=AUTH)).json()
        assert [j["broken"] for j in listed if j["id"] == "evil"] == [True]
        assert (await runtime.service.list_runs(job_id="evil"))["total"] == 0
        assert (await runtime.service.scheduler_info())["broken_jobs"] == 1

    assert "evil" in stored(url)

    async with started(make_app(database_url=url)) as (client, runtime):
        response = await client.get("/scheduler/jobs/evil", headers=AUTH)
        assert response.status_code == 200
        assert response.json()["broken"] is True
        assert (await client.post("/scheduler/jobs/evil/run", headers=AUTH)).status_code == 422
        assert (await runtime.service.list_runs(job_id="evil"))["total"] == 0

    assert stored(url)["evil"].func == "os:system"
    assert not marker.exists()


async def test_unreadable_row_is_reported_broken_not_fatal(
    url: str, make_app: Callable[..., Flask]
) -> None:
    async with started(make_app(database_url=url)) as (client, runtime):
        with raw(url) as conn:
            conn.execute(
                text(
                    "INSERT INTO asyncapp_jobs (id, func, next_run_time, data, version, "
                    "max_instances) "
                    "VALUES ('garbled', 'tests.jobs:record', NULL, '{not json', 1, 1)"
                )
            )
        listed = (await client.get("/scheduler/jobs", headers=AUTH)).json()
        assert [(j["id"], j["broken"]) for j in listed] == [("garbled", True)]
    async with started(make_app(database_url=url)) as (_, runtime):
        assert "garbled" in runtime.cache.broken


# -- jobs declared in code ------------------------------------------------------------


@pytest.fixture
def declared_module(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """``tests.jobs_declared`` as the code says by default (every 30 minutes)."""
    monkeypatch.delenv("TESTS_DECLARED_MINUTES", raising=False)
    yield importlib.reload(importlib.import_module("tests.jobs_declared"))
    monkeypatch.delenv("TESTS_DECLARED_MINUTES", raising=False)
    importlib.reload(importlib.import_module("tests.jobs_declared"))


async def test_declared_jobs_of_modules_not_listed_are_not_scheduled(
    url: str, make_app: Callable[..., Flask], declared_module: ModuleType
) -> None:
    assert "tests.jobs_declared:declared" in registry.refs()
    async with started(make_app(database_url=url, job_modules="tests.jobs")) as (_, runtime):
        assert await runtime.service.list_jobs() == []


async def test_code_declared_job_keeps_runtime_pause_and_takes_code_changes(
    url: str,
    make_app: Callable[..., Flask],
    declared_module: ModuleType,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    modules = "tests.jobs,tests.jobs_declared"

    async with started(make_app(database_url=url, job_modules=modules)) as (_, runtime):
        job = await runtime.service.get_job("declared")
        assert job["func"] == "tests.jobs_declared:declared"
        assert job["minutes"] == 30
        assert job["paused"] is False
        await runtime.service.pause_job("declared", API)

    async with started(make_app(database_url=url, job_modules=modules)) as (_, runtime):
        job = await runtime.service.get_job("declared")
        assert job["paused"] is True
        assert job["next_run_time"] is None
        assert job["minutes"] == 30
        history = await runtime.service.job_changes("declared")
        # Starting again with the same code changed nothing.
        assert [c["action"] for c in history["changes"]] == ["pause", "add"]
        assert history["changes"][1]["source"] == "code"

    monkeypatch.setenv("TESTS_DECLARED_MINUTES", "45")
    importlib.reload(declared_module)
    async with started(make_app(database_url=url, job_modules=modules)) as (_, runtime):
        job = await runtime.service.get_job("declared")
        assert job["minutes"] == 45
        assert job["paused"] is True
        assert job["next_run_time"] is None

    row = stored(url)["declared"]
    assert row.next_run_time is None
    assert json.loads(row.data)["trigger"]["minutes"] == 45


# -- changes made by another process ----------------------------------------------------


async def test_changes_by_another_process_reach_the_running_app(
    url: str, make_app: Callable[..., Flask]
) -> None:
    async with started(make_app(database_url=url)) as (_, runtime):
        other_app = make_app(database_url=url)
        async with other_app.extensions["asyncapp"].offline_service() as other:
            spec = {**SPEC, "id": "remote", "args": ["r"], "minutes": None}
            spec["trigger"] = {"type": "interval", "minutes": 7}
            await other.add_job(spec, Actor("cli"))
            await runtime.feed.reached(last_change(url))
            entry = runtime.cache.entry("remote")
            assert entry is not None
            assert entry.job.trigger["minutes"] == 7 and entry.job.args == ["r"]
            assert entry.next_run_time is not None

            await other.pause_job("remote", Actor("cli"))
            await runtime.feed.reached(last_change(url))
            entry = runtime.cache.entry("remote")
            assert entry is not None and entry.job.paused and entry.next_run_time is None

            await other.delete_job("remote", Actor("cli"))
            await runtime.feed.reached(last_change(url))
            assert runtime.cache.entry("remote") is None


async def test_only_changed_jobs_are_reloaded(url: str, make_app: Callable[..., Flask]) -> None:
    """A change elsewhere costs a read of that job's row, not of the whole table."""
    async with started(make_app(database_url=url)) as (client, runtime):
        for i in range(20):
            body = {**SPEC, "id": f"job{i}"}
            assert (await client.post("/scheduler/jobs", json=body, headers=AUTH)).is_success
        await runtime.feed.reached(last_change(url))
        statements: list[str] = []
        capturing = True

        def capture(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
            if capturing and "FROM asyncapp_jobs" in statement:
                statements.append(statement)

        # Never removed: removing races the database threads iterating the
        # listeners; it goes with the engine.
        event.listen(runtime.store.db.engine, "before_cursor_execute", capture)
        other_app = make_app(database_url=url)
        async with other_app.extensions["asyncapp"].offline_service() as other:
            await other.pause_job("job7", Actor("cli"))
        await runtime.feed.reached(last_change(url))
        capturing = False
        entry = runtime.cache.entry("job7")
        assert entry is not None and entry.job.paused

    assert len(statements) == 1, statements
    assert "IN" in statements[0].upper()


# -- run history --------------------------------------------------------------------


async def test_run_history_records_success_and_error(
    url: str, make_app: Callable[..., Flask]
) -> None:
    jobs.reset()
    async with started(make_app(database_url=url)) as (client, runtime):
        for spec in (
            {"id": "good", "func": "tests.jobs:record", "args": ["good"]},
            {"id": "bad", "func": "tests.jobs:fail", "args": ["boom"]},
        ):
            response = await client.post("/scheduler/jobs", json=spec, headers=AUTH)
            assert response.status_code == 200, response.text
        await jobs.wait_fired("good")
        await jobs.wait_fired("fail:boom")
        await runtime.dispatcher.drain(5)
        assert await runtime.recorder.flush(5)
        page = await runtime.service.list_runs()
        errors = await runtime.service.list_runs(status="error")

    runs = {run["job_id"]: run for run in page["runs"]}
    good, bad = runs["good"], runs["bad"]
    assert good["status"] == "success"
    assert good["error_type"] is None and good["error_message"] is None
    assert good["started_at"] is not None and good["ended_at"] is not None
    assert bad["status"] == "error"
    assert bad["error_type"] == "ValueError"
    assert bad["error_message"] == "boom"
    assert [run["job_id"] for run in errors["runs"]] == ["bad"]
    with raw(url) as conn:
        rows = conn.execute(
            text("SELECT job_id, status, error_type, error_message FROM asyncapp_runs")
        ).all()
    assert sorted(tuple(row) for row in rows) == [
        ("bad", "error", "ValueError", "boom"),
        ("good", "success", None, None),
    ]


async def test_a_job_the_code_no_longer_declares_is_removed_at_start_but_api_jobs_stay(
    url: str,
    make_app: Callable[..., Flask],
    declared_module: ModuleType,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="asyncapp")
    async with started(
        make_app(database_url=url, job_modules="tests.jobs,tests.jobs_declared")
    ) as (
        client,
        _,
    ):
        assert (await client.post("/scheduler/jobs", json=SPEC, headers=AUTH)).is_success
    # The next start runs code that does not declare "declared" any more.
    async with started(make_app(database_url=url, job_modules="tests.jobs")) as (_, runtime):
        listed = [job["id"] for job in await runtime.service.list_jobs()]
        history = await runtime.service.job_changes("declared")
    assert listed == ["keep"]
    assert history["changes"][0]["action"] == "remove"
    assert history["changes"][0]["source"] == "code"
    removed = [r for r in caplog.records if "no longer declared in code, removed" in r.getMessage()]
    assert len(removed) == 1


async def test_job_modules_named_in_code_win_over_the_setting(
    db_url: str, monkeypatch: pytest.MonkeyPatch, declared_module: ModuleType
) -> None:
    from asyncapp import create_app
    from tests.conftest import app_config

    config = app_config(db_url)
    config.pop("ASYNCAPP_JOB_MODULES")
    monkeypatch.setenv("ASYNCAPP_JOB_MODULES", "tests.jobs")
    app = create_app(config, job_modules=["tests.jobs", "tests.jobs_declared"])
    assert app.extensions["asyncapp"].settings.job_modules == ["tests.jobs", "tests.jobs_declared"]
    async with started(app) as (_, runtime):
        assert [job["id"] for job in await runtime.service.list_jobs()] == ["declared"]
    # The CLI of the same app sees the same jobs, functions included (nothing broken).
    runner = app.test_cli_runner()
    result = await asyncio.to_thread(runner.invoke, args=["jobs", "list", "--json"])
    assert result.exit_code == 0, result.output
    assert [(j["id"], j["broken"]) for j in json.loads(result.output)] == [("declared", False)]
