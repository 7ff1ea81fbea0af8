"""Schema migrations: a database made by asyncapp 0.1.0 is upgraded with its data, the
migrated schema is exactly what the code queries, and processes migrating at once all
succeed (threads, forked processes opening a fresh SQLite file, real servers)."""

from __future__ import annotations

import contextlib
import json
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from flask import Flask
from sqlalchemy import (
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    inspect,
    select,
    text,
)

from asyncapp.store.database import Database
from asyncapp.store.migrate import VERSION_TABLE, current_revision, head_revision, migrate
from asyncapp.store.tables import attempts_table, metadata, runs_table
from tests.conftest import AUTH, Server, serve, wait_until
from tests.test_cluster import FAST, live

# -- the schema and rows of asyncapp 0.1.0, as its code wrote them ---------------------

legacy = MetaData()
Table(
    "asyncapp_jobs",
    legacy,
    Column("id", String(191), primary_key=True),
    Column("func", String(400), nullable=False),
    Column("next_run_time", Float, nullable=True, index=True),
    Column("data", Text, nullable=False),
)
legacy_runs = Table(
    "asyncapp_runs",
    legacy,
    Column("id", String(32), primary_key=True),
    Column("job_id", String(191), nullable=False),
    Column("scheduled_for", DateTime(timezone=True), nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=True),
    Column("ended_at", DateTime(timezone=True), nullable=True),
    Column("status", String(16), nullable=False),
    Column("error_type", String(200), nullable=True),
    Column("error_message", Text, nullable=True),
    Column("node", String(200), nullable=False),
    Column("attempt", Integer, nullable=False, default=1),
    Index("ix_asyncapp_runs_job_scheduled", "job_id", "scheduled_for"),
    Index("ix_asyncapp_runs_status", "status"),
)
Table(
    "asyncapp_meta",
    legacy,
    Column("key", String(64), primary_key=True),
    Column("value", Integer, nullable=False),
)

NEXT = datetime(2030, 1, 1, 12, tzinfo=UTC)
EARLIER = datetime(2026, 11, 1, 8, tzinfo=UTC)


def legacy_data(minutes: int, max_instances: int = 1) -> str:
    return json.dumps(
        {
            "name": "legacy",
            "args": ["x"],
            "kwargs": {},
            "trigger": {
                "type": "interval", "weeks": 0, "days": 0, "hours": 0, "minutes": minutes,
                "seconds": 0, "start_date": "2026-11-01T08:00:00+00:00", "end_date": None,
                "timezone": "UTC", "jitter": None,
            },
            "misfire_grace_time": 60,
            "max_instances": max_instances,
            "coalesce": True,
            "declared": None,
        },
        sort_keys=True,
        separators=(",", ":"),
    )  # fmt: skip


def make_legacy_database(url: str) -> None:
    engine = create_engine(url)
    try:
        legacy.create_all(engine)
        with engine.begin() as conn:
            conn.execute(
                legacy.tables["asyncapp_meta"].insert(), {"key": "jobs_revision", "value": 7}
            )
            conn.execute(
                legacy.tables["asyncapp_jobs"].insert(),
                [
                    {"id": "legacy", "func": "tests.jobs:record", "next_run_time": NEXT.timestamp(),
                     "data": legacy_data(30, max_instances=2)},
                    {"id": "held", "func": "tests.jobs:record", "next_run_time": None,
                     "data": legacy_data(10)},
                ],
            )  # fmt: skip

            def run(run_id: str, status: str, minutes: int, **extra: Any) -> dict[str, Any]:
                scheduled = EARLIER + timedelta(minutes=minutes)
                return {
                    "id": run_id, "job_id": "legacy", "scheduled_for": scheduled,
                    "started_at": scheduled + timedelta(seconds=1),
                    "ended_at": scheduled + timedelta(seconds=2), "status": status,
                    "error_type": None, "error_message": None, "node": "old:1", "attempt": 1,
                    **extra,
                }  # fmt: skip

            conn.execute(
                legacy_runs.insert(),
                [
                    run("ok", "success", 0),
                    # 0.1.0 with four workers ran one time four times; two copies here.
                    run("dup1", "success", 30, node="old:2"),
                    run("dup2", "error", 30, node="old:3", error_type="ValueError",
                        started_at=EARLIER + timedelta(minutes=30, seconds=5)),
                    run("late", "missed", 60, started_at=None),
                    run("left", "running", 90, ended_at=None),
                ],
            )  # fmt: skip
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest, db_url: str) -> str:
    if request.param == "sqlite":
        return db_url
    return str(request.getfixturevalue("pg_url"))


def schema_differences(url: str) -> list[Any]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
            return list(compare_metadata(context, metadata))
    finally:
        engine.dispose()


async def test_a_0_1_0_database_is_upgraded_with_its_data(
    url: str, make_app: Callable[..., Flask]
) -> None:
    make_legacy_database(url)
    async with serve(make_app(database_url=url)) as client:
        listed = {j["id"]: j for j in (await client.get("/scheduler/jobs", headers=AUTH)).json()}
        history = (await client.get("/scheduler/jobs/legacy/runs", headers=AUTH)).json()

    assert set(listed) == {"legacy", "held"}
    legacy_job = listed["legacy"]
    assert legacy_job["minutes"] == 30 and legacy_job["args"] == ["x"]
    assert legacy_job["max_instances"] == 2 and legacy_job["version"] == 1
    assert datetime.fromisoformat(legacy_job["next_run_time"]) == NEXT
    assert listed["held"]["paused"] is True and listed["held"]["next_run_time"] is None

    runs = {run["id"]: run for run in history["runs"]}
    assert set(runs) == {"ok", "dup2", "late", "left"}
    assert runs["left"]["status"] == "interrupted"
    assert "earlier version" in runs["left"]["error_message"]
    assert runs["late"]["reason"] == "late"
    # The two copies of one time: the later one is the run, the other its first attempt.
    assert runs["dup2"]["attempt"] == 2
    assert [(a["attempt"], a["status"], a["node"]) for a in runs["dup2"]["attempts"]] == [
        (1, "success", "old:2")
    ]

    engine = create_engine(url)
    try:
        assert current_revision(engine) == head_revision()
        assert not inspect(engine).has_table("asyncapp_meta")
        with engine.connect() as conn:
            kept = conn.execute(select(attempts_table.c.run_id)).scalars().all()
            assert kept == ["dup2"]
            assert conn.execute(select(runs_table.c.id)).scalars().all().count("dup1") == 0
    finally:
        engine.dispose()
    assert schema_differences(url) == []


async def test_a_fresh_database_gets_exactly_the_schema_the_code_queries(
    url: str, make_app: Callable[..., Flask]
) -> None:
    async with serve(make_app(database_url=url)):
        pass
    assert schema_differences(url) == []


def test_processes_migrating_a_fresh_database_at_once_all_succeed(url: str) -> None:
    engines = [create_engine(url) for _ in range(4)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(engines))

    def run(engine: Any) -> None:
        barrier.wait()
        try:
            migrate(engine)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(engine,)) for engine in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    try:
        assert errors == []
        assert current_revision(engines[0]) == head_revision()
    finally:
        for engine in engines:
            engine.dispose()


def test_the_written_head_is_alembics_head() -> None:
    """A new migration must move ``HEAD_REVISION``: at head, startup skips Alembic."""
    from asyncapp.store.migrate import HEAD_REVISION

    assert head_revision() == HEAD_REVISION


def test_a_database_at_head_is_opened_without_importing_alembic(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'lazy.db'}"
    code = (
        "import asyncio, sys\n"
        "from asyncapp.store.database import Database\n"
        "async def main():\n"
        f"    db = Database({url!r})\n"
        "    await db.open()\n"
        "    await db.close()\n"
        "asyncio.run(main())\n"
        "print('alembic' in sys.modules)\n"
    )
    first = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    again = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert first.stdout.strip() == "True", "a fresh file is migrated with Alembic"
    assert again.stdout.strip() == "False", "at head, Alembic is not imported"


#: Forks ``count`` processes per round that open one fresh SQLite file at the same
#: instant (a pipe releases them together), as a server starting does: open and
#: migrate, then a first write transaction that changes a row.  Prints each failure.
OPEN_TOGETHER = """
import asyncio, os, sys
from sqlalchemy import text
from asyncapp.store.database import Database, bounded_waits

def start(url):
    async def main():
        db = Database(url, **bounded_waits(2.0))
        try:
            await db.open()
            await db.write(lambda conn: conn.execute(
                text("UPDATE asyncapp_alembic_version SET version_num = version_num")))
        finally:
            await db.close()
    asyncio.run(main())

rounds, count, folder = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
for round in range(rounds):
    url = f"sqlite:///{folder}/fresh{round}.db"
    gate, release = os.pipe()
    children = []
    for _ in range(count):
        pid = os.fork()
        if pid == 0:
            os.close(release)
            os.read(gate, 1)
            try:
                start(url)
            except BaseException as exc:
                print(f"round {round}: {type(exc).__name__}: {exc}", flush=True)
                os._exit(1)
            os._exit(0)
        children.append(pid)
    os.close(gate)
    os.write(release, b"x" * count)
    os.close(release)
    for pid in children:
        _, status = os.waitpid(pid, 0)
        if status:
            print(f"round {round}: a process exited with status {status}", flush=True)
print("done", flush=True)
"""


@pytest.mark.timeout(180)
def test_processes_opening_a_fresh_sqlite_file_at_once_never_fail(tmp_path: Path) -> None:
    """50 rounds of 6 processes opening one fresh file together: every one starts."""
    result = subprocess.run(
        [sys.executable, "-c", OPEN_TOGETHER, "50", "6", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "done\n", result.stdout + result.stderr


@pytest.mark.timeout(180)
def test_servers_starting_together_on_a_fresh_sqlite_file_all_start(
    hypercorn_server: Callable[..., Server], tmp_path: Path
) -> None:
    """Two servers and a two-worker Hypercorn on one fresh file, started at once, twice."""
    for round in range(2):
        url = f"sqlite:///{tmp_path / f'fresh{round}.db'}"
        servers = [
            hypercorn_server(wait=False, workers=workers, ASYNCAPP_DATABASE_URL=url, **FAST)
            for workers in (0, 0, 2)
        ]
        for server in servers:
            server.wait_for("Running on http://")
        first = servers[0]
        wait_until(lambda s=first: len(live(s)) == 4, what="four processes registered")
        for server in servers:
            server.process.send_signal(signal.SIGTERM)
        for server in servers:
            code, output = server.exited()
            assert code == 0, output
            assert "Traceback" not in output and "database is locked" not in output, output


def journal_mode(path: Path) -> str:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return str(conn.execute("PRAGMA journal_mode").fetchone()[0])


async def test_a_wal_file_of_an_earlier_asyncapp_leaves_wal_once_opened_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """WAL maps its index (SIGBUS when the file turns immutable): a file left in WAL
    is switched to a rollback journal by a process that has it alone, and served in
    WAL as before while another process has it open."""
    path = tmp_path / "old.db"
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE kept (x)")
    opener = (
        f"import sqlite3, sys; c = sqlite3.connect({str(path)!r}); "
        "c.execute('SELECT * FROM kept').fetchall(); print('open', flush=True); sys.stdin.read()"
    )
    with subprocess.Popen(
        [sys.executable, "-c", opener], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as holder:
        assert holder.stdin is not None and holder.stdout is not None
        assert holder.stdout.readline() == "open\n"
        await opened_and_written(f"sqlite:///{path}")
        assert journal_mode(path) == "wal"
        assert "stays in WAL mode while other processes have it open" in caplog.text
        holder.stdin.close()
    await opened_and_written(f"sqlite:///{path}")
    assert journal_mode(path) == "delete"  # a connection's own default: not WAL any more
    assert not Path(f"{path}-shm").exists()


async def opened_and_written(url: str) -> None:
    db = Database(url)
    await db.open()
    try:
        await db.write(lambda conn: conn.execute(text("INSERT INTO kept VALUES (1)")))
    finally:
        await db.close()
