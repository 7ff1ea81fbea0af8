"""The JSON job store on SQLite and PostgreSQL: rows, restarts, broken rows, code-declared
jobs, changes from other processes, and run history."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import pytest
from flask import Flask
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Connection

from asyncapp import JobNotFound
from asyncapp.service import JobService
from asyncapp.tasks import registry
from tests import jobs
from tests.conftest import AUTH, serve

T = TypeVar("T")

SPEC = {
    "id": "keep",
    "func": "tests.jobs:record",
    "args": ["x"],
    "trigger": "interval",
    "minutes": 5,
}


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
            for row in conn.execute(text("SELECT id, func, next_run_time, data FROM asyncapp_jobs"))
        }


def bump_revision(conn: Connection) -> None:
    conn.execute(text("UPDATE asyncapp_meta SET value = value + 1 WHERE key = 'jobs_revision'"))


async def eventually(check: Callable[[], Awaitable[T] | T], timeout: float = 5) -> T:
    """Poll ``check`` until it returns without AssertionError or JobNotFound.

    Used only where no event exists: a change another process made reaches the
    app when its sync loop next reads the database.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
            if asyncio.iscoroutine(result):
                result = await result
            return result  # type: ignore[return-value]
        except (AssertionError, JobNotFound):
            if time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def started(flask_app: Flask) -> AsyncIterator[tuple[Any, JobService]]:
    async with serve(flask_app) as client:
        yield client, flask_app.extensions["asyncapp"].service()


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
    assert data["args"] == ["x"]
    assert data["kwargs"] == {}
    assert data["name"] == "keep"
    assert data["trigger"]["type"] == "interval"
    assert data["trigger"]["minutes"] == 5
    assert data["trigger"]["hours"] == 0
    assert data["trigger"]["timezone"] == "UTC"
    assert row.next_run_time == pytest.approx(as_time(job["next_run_time"]).timestamp(), abs=1e-6)


async def test_job_survives_a_restart_unchanged(url: str, make_app: Callable[..., Flask]) -> None:
    async with started(make_app(database_url=url)) as (client, _):
        added = (await client.post("/scheduler/jobs", json=SPEC, headers=AUTH)).json()

    async with started(make_app(database_url=url)) as (client, service):
        response = await client.get("/scheduler/jobs/keep", headers=AUTH)
        assert response.status_code == 200, response.text
        again = response.json()
        runs = await service.list_runs(job_id="keep")

    assert again["next_run_time"] is not None
    assert as_time(again["next_run_time"]) == as_time(added["next_run_time"])
    assert again == added  # same trigger, args, options; nothing recomputed
    assert runs["total"] == 0  # five minutes away: restarting did not fire it


async def test_paused_job_stays_paused_across_restarts(
    url: str, make_app: Callable[..., Flask]
) -> None:
    async with started(make_app(database_url=url)) as (client, service):
        await service.add_job({**SPEC, "trigger": {"type": "interval", "minutes": 5}})
        paused = await client.post("/scheduler/jobs/keep/pause", headers=AUTH)
        assert paused.json()["paused"] is True
    assert stored(url)["keep"].next_run_time is None

    for _ in range(2):
        async with started(make_app(database_url=url)) as (_, service):
            job = service.get_job("keep")
            assert job["paused"] is True
            assert job["next_run_time"] is None
            assert job["minutes"] == 5
    assert stored(url)["keep"].next_run_time is None


# -- rows naming unregistered functions ------------------------------------------------


async def test_row_with_unregistered_function_is_kept_reported_and_never_run(
    url: str, make_app: Callable[..., Flask], tmp_path: Path
) -> None:
    jobs.reset()
    marker = tmp_path / "pwned"
    data = {
        "name": "evil",
        "args": [f"touch {marker}"],
        "kwargs": {},
        "trigger": {
            "type": "interval",
            "weeks": 0,
            "days": 0,
            "hours": 0,
            "minutes": 0,
            "seconds": 1,
            "start_date": None,
            "end_date": None,
            "timezone": "UTC",
            "jitter": None,
        },
        "misfire_grace_time": 60,
        "max_instances": 1,
        "coalesce": True,
        "declared": None,
    }

    async with started(make_app(database_url=url)) as (client, service):
        with raw(url) as conn:
            conn.execute(
                text(
                    "INSERT INTO asyncapp_jobs (id, func, next_run_time, data) "
                    "VALUES ('evil', 'os:system', :due, :data)"
                ),
                {"due": time.time() - 1, "data": json.dumps(data)},
            )
            bump_revision(conn)

        def reported_broken() -> dict[str, Any]:
            job = service.get_job("evil")
            assert job["broken"] is True
            return job

        job = await eventually(reported_broken)
        assert job["func"] == "os:system"
        assert job["args"] == [f"touch {marker}"]
        # A due job that does run, to show the scheduler was firing meanwhile.
        await service.add_job(
            {
                "id": "sentinel",
                "func": "tests.jobs:record",
                "args": ["sentinel"],
                "trigger": {"type": "date", "run_date": datetime.now(UTC).isoformat()},
            }
        )
        await jobs.wait_fired("sentinel")
        listed = (await client.get("/scheduler/jobs", headers=AUTH)).json()
        assert [j["broken"] for j in listed if j["id"] == "evil"] == [True]
        assert (await service.list_runs(job_id="evil"))["total"] == 0
        assert service.scheduler_info()["broken_jobs"] == 1

    assert "evil" in stored(url)

    async with started(make_app(database_url=url)) as (client, service):
        response = await client.get("/scheduler/jobs/evil", headers=AUTH)
        assert response.status_code == 200
        assert response.json()["broken"] is True
        assert (await client.post("/scheduler/jobs/evil/run", headers=AUTH)).status_code == 422
        assert (await service.list_runs(job_id="evil"))["total"] == 0

    assert stored(url)["evil"].func == "os:system"
    assert not marker.exists()


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
    async with started(make_app(database_url=url, job_modules="tests.jobs")) as (_, service):
        assert [job["id"] for job in service.list_jobs()] == []


async def test_code_declared_job_keeps_runtime_pause_and_takes_code_changes(
    url: str,
    make_app: Callable[..., Flask],
    declared_module: ModuleType,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    modules = "tests.jobs,tests.jobs_declared"

    async with started(make_app(database_url=url, job_modules=modules)) as (_, service):
        job = service.get_job("declared")
        assert job["func"] == "tests.jobs_declared:declared"
        assert job["minutes"] == 30
        assert job["paused"] is False
        await service.pause_job("declared")

    async with started(make_app(database_url=url, job_modules=modules)) as (_, service):
        job = service.get_job("declared")
        assert job["paused"] is True
        assert job["next_run_time"] is None
        assert job["minutes"] == 30

    monkeypatch.setenv("TESTS_DECLARED_MINUTES", "45")
    importlib.reload(declared_module)
    async with started(make_app(database_url=url, job_modules=modules)) as (_, service):
        job = service.get_job("declared")
        assert job["minutes"] == 45
        assert job["paused"] is True
        assert job["next_run_time"] is None

    row = stored(url)["declared"]
    assert row.next_run_time is None
    assert json.loads(row.data)["trigger"]["minutes"] == 45


# -- changes made by another process ----------------------------------------------------


async def test_changes_by_another_runtime_reach_the_running_app(
    url: str, make_app: Callable[..., Flask]
) -> None:
    async with started(make_app(database_url=url)) as (_, service):
        other_app = make_app(database_url=url)
        async with other_app.extensions["asyncapp"].offline_service() as other:
            await other.add_job(
                {
                    "id": "remote",
                    "func": "tests.jobs:record",
                    "args": ["r"],
                    "trigger": {"type": "interval", "minutes": 7},
                }
            )

            def arrived() -> None:
                job = service.get_job("remote")
                assert job["minutes"] == 7
                assert job["args"] == ["r"]
                assert job["paused"] is False

            await eventually(arrived)

            await other.pause_job("remote")

            def paused() -> None:
                assert service.get_job("remote")["paused"] is True

            await eventually(paused)

            await other.delete_job("remote")

            def gone() -> None:
                assert "remote" not in {job["id"] for job in service.list_jobs()}

            await eventually(gone)


async def test_raw_update_with_revision_bump_reaches_the_running_app(
    url: str, make_app: Callable[..., Flask]
) -> None:
    async with started(make_app(database_url=url)) as (_, service):
        await service.add_job({**SPEC, "trigger": {"type": "interval", "minutes": 5}})
        data = json.loads(stored(url)["keep"].data)
        data["trigger"]["minutes"] = 9
        data["args"] = ["changed"]
        due = time.time() + 3600
        with raw(url) as conn:
            conn.execute(
                text(
                    "UPDATE asyncapp_jobs SET data = :data, next_run_time = :due WHERE id = 'keep'"
                ),
                {"data": json.dumps(data), "due": due},
            )
            bump_revision(conn)

        def changed() -> dict[str, Any]:
            job = service.get_job("keep")
            assert job["minutes"] == 9
            return job

        job = await eventually(changed)
        assert job["args"] == ["changed"]
        assert as_time(job["next_run_time"]).timestamp() == pytest.approx(due, abs=1e-6)


def change_minutes(conn: Connection, job_id: str, minutes: int) -> None:
    """What another process does: change a job's trigger and bump the revision."""
    data = json.loads(
        conn.execute(
            text("SELECT data FROM asyncapp_jobs WHERE id = :id"), {"id": job_id}
        ).scalar_one()
    )
    data["trigger"]["minutes"] = minutes
    conn.execute(
        text("UPDATE asyncapp_jobs SET data = :data WHERE id = :id"),
        {"data": json.dumps(data), "id": job_id},
    )
    bump_revision(conn)


async def test_change_committed_while_the_app_reloads_is_not_lost(
    url: str, make_app: Callable[..., Flask]
) -> None:
    """Another process commits between the reload's read of the rows and of the revision.

    The reload must not record a revision newer than the rows it read, or that
    change is skipped until some later, unrelated change.
    """
    flask_app = make_app(database_url=url)
    other = create_engine(url)  # the other process; connected before the hook is in place
    with other.connect():
        pass
    interleaved = threading.Event()
    after_rows_read = fired = False

    def between_statements(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        nonlocal after_rows_read, fired
        if fired or not statement.lstrip().upper().startswith("SELECT"):
            return
        if "FROM asyncapp_jobs" in statement:
            after_rows_read = True
        elif after_rows_read and "FROM asyncapp_meta" in statement:
            fired = True
            with other.begin() as other_conn:
                change_minutes(other_conn, "keep", 11)
            interleaved.set()

    try:
        async with started(flask_app) as (_, service):
            await service.add_job({**SPEC, "trigger": {"type": "interval", "minutes": 5}})
            # Not removed while the app runs: removing races the database thread
            # iterating the listeners; it is inert once fired and goes with the engine.
            engine = flask_app.extensions["asyncapp"].runtime.db.engine
            event.listen(engine, "before_cursor_execute", between_statements)
            with other.begin() as conn:
                change_minutes(conn, "keep", 9)
            assert await asyncio.to_thread(interleaved.wait, 5)

            def latest() -> None:
                assert service.get_job("keep")["minutes"] == 11

            await eventually(latest, timeout=2)
    finally:
        other.dispose()


# -- run history --------------------------------------------------------------------


async def test_run_history_records_success_and_error(
    url: str, make_app: Callable[..., Flask]
) -> None:
    jobs.reset()
    async with started(make_app(database_url=url)) as (client, service):
        for spec in (
            {"id": "good", "func": "tests.jobs:record", "args": ["good"]},
            {"id": "bad", "func": "tests.jobs:fail", "args": ["boom"]},
        ):
            response = await client.post("/scheduler/jobs", json=spec, headers=AUTH)
            assert response.status_code == 200, response.text
        await jobs.wait_fired("good")

        async def finished() -> dict[str, dict[str, Any]]:
            response = await client.get("/scheduler/runs", headers=AUTH)
            assert response.status_code == 200
            runs = {run["job_id"]: run for run in response.json()["runs"]}
            assert runs.keys() == {"good", "bad"}
            assert all(run["status"] != "running" for run in runs.values())
            return runs

        runs = await eventually(finished)
        errors = await service.list_runs(status="error")

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


async def test_own_writes_are_not_mistaken_for_another_process(
    url: str, make_app: Callable[..., Flask]
) -> None:
    """Reloading costs a full read of the table: only other processes' writes may cause it."""
    async with started(make_app(database_url=url)) as (_, service):
        store = service.runtime.store
        for i in range(5):
            await service.add_job(
                {
                    "id": f"own{i}",
                    "func": "tests.jobs:record",
                    "args": ["x"],
                    "trigger": {"type": "interval", "minutes": 5},
                }
            )
            await service.pause_job(f"own{i}")
            assert await store.sync() is False
        other = create_engine(url)
        with other.begin() as conn:
            change_minutes(conn, "own0", 7)
        other.dispose()
        assert await store.sync() is True
        assert service.get_job("own0")["minutes"] == 7
        await service.resume_job("own1")
        assert await store.sync() is False
