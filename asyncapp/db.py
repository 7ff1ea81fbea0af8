"""The database: tables, one engine, and a worker thread that does all its I/O.

SQLAlchemy's sync engine is used from ONE dedicated thread, never from the
event loop (DESIGN.md Fact 5: APScheduler's SQLAlchemyJobStore committing on
the loop thread gave 109 ms p99 loop lag).  One thread also serialises writes,
which is what SQLite wants, and keeps SQLite and PostgreSQL on the same code.

:class:`Writer` is the write-behind queue in front of it: callers on the loop
record the latest state of a row and return at once; a background task writes
everything queued in one transaction per batch.  ``await writer.flush()`` is
the durability point (API responses and shutdown use it).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import (
    Column,
    DateTime,
    Engine,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    bindparam,
    create_engine,
    delete,
    event,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import SQLAlchemyError

log = logging.getLogger("asyncapp.db")
T = TypeVar("T")

metadata = MetaData()

jobs_table = Table(
    "asyncapp_jobs",
    metadata,
    Column("id", String(191), primary_key=True),
    Column("func", String(400), nullable=False),
    # UTC epoch seconds; NULL means paused.
    Column("next_run_time", Float, nullable=True, index=True),
    # JSON: name, args, kwargs, trigger spec, options, code declaration.
    Column("data", Text, nullable=False),
)

runs_table = Table(
    "asyncapp_runs",
    metadata,
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

# One row, key "jobs_revision": bumped by every write to asyncapp_jobs so that
# other processes notice changes with one cheap read.
meta_table = Table(
    "asyncapp_meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Integer, nullable=False),
)

JOBS_REVISION = "jobs_revision"


class Database:
    """An engine plus the single thread that uses it."""

    def __init__(self, url: str) -> None:
        self.url = make_url(url)
        self.engine: Engine | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="asyncapp-db")

    async def open(self) -> None:
        """Connect and create missing tables (off the loop)."""
        await self.run(self._open)

    async def close(self) -> None:
        if self.engine is not None:
            await self.run(self.engine.dispose)
        self._executor.shutdown(wait=True)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the database thread and await its result."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def transaction(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn(conn)`` in one transaction; call on the database thread."""
        assert self.engine is not None, "database is not open"
        with self.engine.begin() as conn:
            return fn(conn)

    def _open(self) -> None:
        if self.url.get_backend_name() == "sqlite":
            self.engine = _sqlite_engine(self.url)
        else:
            self.engine = create_engine(self.url, pool_pre_ping=True, pool_size=2)
        try:
            metadata.create_all(self.engine)
        except SQLAlchemyError:
            # Several workers starting at once may race to create the tables.
            metadata.create_all(self.engine)
        with self.engine.begin() as conn:
            found = conn.execute(
                select(meta_table.c.value).where(meta_table.c.key == JOBS_REVISION)
            ).first()
            if found is None:
                conn.execute(meta_table.insert().values(key=JOBS_REVISION, value=0))


def read_revision(conn: Connection) -> int:
    return int(
        conn.execute(
            select(meta_table.c.value).where(meta_table.c.key == JOBS_REVISION)
        ).scalar_one()
    )


def bump_revision(conn: Connection) -> int:
    """Increment the jobs revision; returns the new value."""
    conn.execute(
        update(meta_table)
        .where(meta_table.c.key == JOBS_REVISION)
        .values(value=meta_table.c.value + 1)
    )
    return read_revision(conn)


def as_utc(value: datetime | None) -> datetime | None:
    """SQLite returns naive datetimes; everything we store is UTC."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _sqlite_engine(url: Any) -> Engine:
    if url.database and url.database != ":memory:":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        # WAL lets the CLI and other processes read while the server writes.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    return engine


#: A queued write: the row's column values, or None to delete the row.
Values = dict[str, Any] | None
Key = tuple[str, str]
CHUNK = 500


class Writer:
    """Write-behind queue: the latest state per row, written in batches.

    ``upsert`` and ``delete`` are cheap and thread-safe (APScheduler may call
    the job store from a thread that is not the loop's).  A later write of the
    same row replaces the earlier one, so a job updated 10 times between two
    batches is written once, and a run that starts and ends within a batch is
    one insert.  A batch is one transaction of a few ``executemany`` statements
    per table: at 2000 runs a second, per-row statements would keep the
    database thread holding the GIL for a large share of the loop's time.
    ``after_batch`` runs on the database thread inside each transaction.
    """

    RETRY_SECONDS = 1.0

    def __init__(
        self,
        db: Database,
        after_batch: Callable[[Connection, list[Key]], None] | None = None,
    ) -> None:
        self._db = db
        self._after_batch = after_batch
        self._tables = {table.name: table for table in metadata.tables.values()}
        self._pending: dict[Key, Values] = {}
        self._lock = threading.Lock()
        self._write_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._task: asyncio.Task[None] | None = None
        self.failures = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="asyncapp-writer")

    async def stop(self) -> None:
        """Write everything queued, then stop the background task."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self.flush()

    def upsert(self, table: Table, row_id: str, values: dict[str, Any]) -> None:
        """Queue writing ``values`` (every column but ``id``) to row ``row_id``."""
        self._put((table.name, row_id), values)

    def delete(self, table: Table, row_id: str) -> None:
        self._put((table.name, row_id), None)

    def pending_keys(self) -> set[Key]:
        with self._lock:
            return set(self._pending)

    async def flush(self) -> None:
        """Return once everything queued before the call is written.

        :raises SQLAlchemyError: if the database refuses the batch (it stays queued).
        """
        async with self._write_lock:
            await self._write_batch()

    def _put(self, key: Key, values: Values) -> None:
        with self._lock:
            self._pending.pop(key, None)
            self._pending[key] = values
        if threading.get_ident() == self._loop_thread:
            self._wake.set()
        else:
            self._loop.call_soon_threadsafe(self._wake.set)

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                async with self._write_lock:
                    await self._write_batch()
            except SQLAlchemyError:
                self.failures += 1
                log.exception("writing to the database failed; retrying in %ss", self.RETRY_SECONDS)
                await asyncio.sleep(self.RETRY_SECONDS)
                self._wake.set()

    async def _write_batch(self) -> None:
        with self._lock:
            batch, self._pending = self._pending, {}
        if not batch:
            return
        try:
            await self._db.run(self._db.transaction, lambda conn: self._apply(conn, batch))
        except BaseException:
            with self._lock:
                # Newer writes queued meanwhile win; requeue the rest.
                batch.update(self._pending)
                self._pending = batch
            raise

    def _apply(self, conn: Connection, batch: dict[Key, Values]) -> None:
        by_table: dict[str, dict[str, Values]] = {}
        for (table_name, row_id), values in batch.items():
            by_table.setdefault(table_name, {})[row_id] = values
        for table_name, rows in by_table.items():
            _write_rows(conn, self._tables[table_name], rows)
        if self._after_batch is not None:
            self._after_batch(conn, list(batch))


def _write_rows(conn: Connection, table: Table, rows: dict[str, Values]) -> None:
    ids = list(rows)
    gone = [row_id for row_id in ids if rows[row_id] is None]
    for start in range(0, len(gone), CHUNK):
        conn.execute(delete(table).where(table.c.id.in_(gone[start : start + CHUNK])))
    kept = [row_id for row_id in ids if rows[row_id] is not None]
    existing: set[str] = set()
    for start in range(0, len(kept), CHUNK):
        chunk = kept[start : start + CHUNK]
        existing.update(conn.execute(select(table.c.id).where(table.c.id.in_(chunk))).scalars())
    updates = [{"_id": row_id, **rows[row_id]} for row_id in kept if row_id in existing]  # type: ignore[dict-item]
    inserts = [{"id": row_id, **rows[row_id]} for row_id in kept if row_id not in existing]  # type: ignore[dict-item]
    if updates:
        columns: dict[str, Any] = {name: bindparam(name) for name in updates[0] if name != "_id"}
        conn.execute(update(table).where(table.c.id == bindparam("_id")).values(columns), updates)
    if inserts:
        conn.execute(insert(table), inserts)
