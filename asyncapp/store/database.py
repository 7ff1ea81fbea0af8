"""The database: one engine, three threads that do all its I/O, and fault translation.

SQLAlchemy's sync engine is used from three dedicated threads, never from the
event loop: APScheduler's ``SQLAlchemyJobStore`` committing on the loop
thread measured 109 ms p99 loop lag at 200 jobs/s.  The *write* thread runs
every transaction that changes something (claims, job changes, run records,
reaping), one at a time, which is also what SQLite wants; the *read*
thread serves the API's and dashboard's queries, so listing 10,000 jobs does
not delay a claim; the *heartbeat* thread, with its own connection, writes
only this process's heartbeat, so liveness never waits behind claims.

Every transaction commits before its ``await`` returns: there is no
write-behind.  A driver error meaning "the database is not there or will not
take writes" (refused connection, server gone, read-only or immutable SQLite
file) becomes :class:`~asyncapp.errors.DatabaseUnavailable`; callers answer
503 and apply nothing.  :attr:`Database.down_since` tells the readiness probe;
it is set by any failure and cleared only by a write that succeeds.

On SQLite, write transactions start with ``BEGIN IMMEDIATE`` (the write lock
up front, so two processes never deadlock upgrading a read lock) and the file
runs in WAL mode, so readers in other processes do not block the writer.

Every wait for a lock is bounded by ``lock_timeout`` (PostgreSQL's
``lock_timeout``, SQLite's busy timeout), kept below the process timeout, and
a PostgreSQL transaction left idle (its process frozen inside it) is ended by
the server after ``idle_timeout`` (``idle_in_transaction_session_timeout``),
which releases its locks.  A lock wait that times out raises
:class:`~asyncapp.errors.DatabaseUnavailable` with ``busy`` set: nothing was
applied, but it is not an outage (``down_since`` is left as it was).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, Table, create_engine, event, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.pool import NullPool
from sqlalchemy.sql.dml import Insert

from asyncapp.errors import DatabaseUnavailable
from asyncapp.store.migrate import HEAD_REVISION, current_revision, migrate

log = logging.getLogger("asyncapp.db")
T = TypeVar("T")

#: Driver errors that mean the database is away or refuses writes, not a bug of ours.
UNAVAILABLE = (OperationalError, InterfaceError, PoolTimeout)
CONNECT_TIMEOUT = 5
#: Seconds a statement waits for a lock by default (see :class:`Database`).
LOCK_TIMEOUT = 5.0
#: Seconds a PostgreSQL transaction may sit idle before the server ends it.
IDLE_TIMEOUT = 10.0
#: PostgreSQL's lock_not_available; SQLite's SQLITE_BUSY.
LOCK_NOT_AVAILABLE = "55P03"
SQLITE_BUSY = 5


class Database:
    """An engine plus the threads that use it; open it on the loop that awaits it."""

    def __init__(
        self, url: str, *, lock_timeout: float = LOCK_TIMEOUT, idle_timeout: float = IDLE_TIMEOUT
    ) -> None:
        self.url = make_url(url)
        self.lock_timeout = lock_timeout
        self.idle_timeout = idle_timeout
        self.dialect = self.url.get_backend_name()
        self.engine: Engine | None = None
        self._write_engine: Engine | None = None
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="asyncapp-db-write")
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="asyncapp-db-read")
        self._beater = ThreadPoolExecutor(max_workers=1, thread_name_prefix="asyncapp-db-beat")
        #: Monotonic time of the first failure of the current outage, None while healthy.
        self.down_since: float | None = None
        self.last_error = ""

    @property
    def is_postgres(self) -> bool:
        return self.dialect == "postgresql"

    async def open(self, *, migrate: bool = True) -> None:
        """Connect and bring the schema up to date (off the loop).

        ``migrate=False`` never writes: a schema that is not the latest is an error.

        :raises DatabaseUnavailable: if the database cannot be reached, or (without
            ``migrate``) its schema needs an upgrade.
        """
        # Not an outage to log: the caller reports the failed start in its own words.
        await self._submit(self._writer, self._open, migrate, outage=False)

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        # Work still running on the read and heartbeat threads (a heartbeat whose
        # await was cancelled goes on in its thread) ends first, so its connection is
        # back in the pool when the pool is disposed, and closed with it.
        for pool in (self._beater, self._reader):
            await loop.run_in_executor(None, functools.partial(pool.shutdown, wait=True))
        if self.engine is not None:
            await loop.run_in_executor(self._writer, self.engine.dispose)
        self._writer.shutdown(wait=True)

    async def write(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn(conn)`` in one write transaction on the write thread; committed on return.

        :raises DatabaseUnavailable: if the database is away or refuses the write
            (the transaction is rolled back).
        """
        return await self._submit(self._writer, self.write_now, fn)

    async def beat(self, fn: Callable[[Connection], T]) -> T:
        """:meth:`write`, on the heartbeat thread and its own connection.

        Liveness must not wait behind claims and results on the write thread.

        :raises DatabaseUnavailable: if the database is away or refuses the write.
        """
        return await self._submit(self._beater, self.write_now, fn)

    async def read(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn(conn)`` in a read-only transaction on the read thread.

        :raises DatabaseUnavailable: if the database is away.
        """
        return await self._submit(self._reader, self.read_now, fn)

    def write_now(self, fn: Callable[[Connection], T]) -> T:
        """:meth:`write`, on the calling thread (which must not be the loop's)."""
        assert self._write_engine is not None, "database is not open"
        with self._write_engine.begin() as conn:
            return fn(conn)

    def read_now(self, fn: Callable[[Connection], T]) -> T:
        assert self.engine is not None, "database is not open"
        with self.engine.begin() as conn:
            return fn(conn)

    async def _submit(
        self, pool: ThreadPoolExecutor, fn: Callable[..., T], *args: Any, outage: bool = True
    ) -> T:
        """Run ``fn(*args)`` on ``pool``; a failure starts an outage unless not ``outage``."""
        try:
            result = await asyncio.get_running_loop().run_in_executor(pool, fn, *args)
        except UNAVAILABLE as exc:
            raise self._unavailable(exc, outage) from exc
        except DBAPIError as exc:
            if exc.connection_invalidated:
                raise self._unavailable(exc, outage) from exc
            raise
        # Only a write ends an outage: a read-only or immutable SQLite file still
        # answers reads (the readiness ping, the change feed) while refusing every write.
        if self.down_since is not None and pool is not self._reader:
            log.warning(
                "the database answers again after %.1f s", time.monotonic() - self.down_since
            )
            self.down_since = None
        return result

    def _unavailable(self, exc: Exception, outage: bool) -> DatabaseUnavailable:
        detail = _one_line(exc)
        if _lock_wait_timed_out(exc):
            return DatabaseUnavailable(detail, busy=True)
        if outage and self.down_since is None:
            self.down_since = time.monotonic()
            log.error("the database is unavailable: %s", detail)
        self.last_error = detail
        return DatabaseUnavailable(detail)

    def _open(self, upgrade: bool) -> None:
        if self.dialect == "sqlite":
            engine = _sqlite_engine(self.url, self.lock_timeout)
        else:
            connect_args = {}
            if "connect_timeout" not in self.url.query:
                connect_args["connect_timeout"] = CONNECT_TIMEOUT
            engine = create_engine(
                self.url,
                pool_pre_ping=True,
                # One connection per database thread (write, read, heartbeat), one spare.
                pool_size=3,
                max_overflow=2,
                connect_args=connect_args,
            )
            if upgrade:
                # Unbounded waits here: a process starting while another migrates
                # waits for it (the advisory lock), however long that takes.
                migrator = create_engine(self.url, poolclass=NullPool, connect_args=connect_args)
                try:
                    migrate(migrator)
                finally:
                    migrator.dispose()
            _bound_waits(engine, self.lock_timeout, self.idle_timeout)
        if upgrade and self.dialect == "sqlite":
            migrate(engine)
        elif not upgrade and current_revision(engine) != HEAD_REVISION:
            engine.dispose()
            raise DatabaseUnavailable(
                "its schema is older than this asyncapp; start the server (or run a command "
                "that changes something) once to upgrade it"
            )
        self.engine = engine
        self._write_engine = engine.execution_options(asyncapp_write=True)

    # -- dialect differences ------------------------------------------------------

    def insert_ignoring_conflicts(self, table: Table, *keys: str) -> Insert:
        """``INSERT ... ON CONFLICT (keys) DO NOTHING`` for this dialect."""
        dialect_insert = postgresql.insert if self.is_postgres else sqlite.insert
        return dialect_insert(table).on_conflict_do_nothing(index_elements=list(keys))

    def clock(self, conn: Connection) -> float:
        """Now, in epoch seconds, by the database server's clock on PostgreSQL.

        Heartbeats are compared with this clock, so processes on machines whose
        clocks disagree still agree on who is alive.  SQLite lives on one machine.
        """
        if self.is_postgres:
            return float(
                conn.execute(text("SELECT extract(epoch FROM clock_timestamp())")).scalar_one()
            )
        return time.time()


def bounded_waits(process_timeout: float) -> dict[str, float]:
    """:class:`Database` wait bounds for a cluster whose processes die after ``process_timeout``.

    Lock waits end well before a process could be presumed dead for waiting; an
    idle transaction lives about as long as its frozen process is presumed alive.
    """
    return {
        "lock_timeout": min(LOCK_TIMEOUT, process_timeout / 2),
        "idle_timeout": max(IDLE_TIMEOUT, process_timeout),
    }


def _one_line(exc: BaseException) -> str:
    cause = getattr(exc, "orig", None) or exc
    lines = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {lines[0] if lines else ''}"


def _lock_wait_timed_out(exc: Exception) -> bool:
    cause = getattr(exc, "orig", None)
    return (
        getattr(cause, "sqlstate", None) == LOCK_NOT_AVAILABLE
        or getattr(cause, "sqlite_errorcode", None) == SQLITE_BUSY
    )


def _bound_waits(engine: Engine, lock_timeout: float, idle_timeout: float) -> None:
    """Set PostgreSQL's lock and idle-transaction timeouts on every new connection."""

    @event.listens_for(engine, "connect")
    def _timeouts(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute(f"SET lock_timeout = {int(lock_timeout * 1000)}")
        cursor.execute(f"SET idle_in_transaction_session_timeout = {int(idle_timeout * 1000)}")
        cursor.close()
        dbapi_connection.commit()


def _sqlite_engine(url: Any, lock_timeout: float) -> Engine:
    if url.database and url.database != ":memory:":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": lock_timeout})

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        # Transactions are begun by the "begin" hook below, not by the driver.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        # WAL lets other processes read while one writes.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={int(lock_timeout * 1000)}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        write = conn.get_execution_options().get("asyncapp_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine
