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
up front, so two processes never deadlock upgrading a read lock).  Nothing of
the database is memory-mapped: a rollback journal (``TRUNCATE``), not WAL, and
``mmap_size`` 0.  WAL keeps its index in a ``-shm`` file that every process
maps and writes; once that file is made immutable (``chattr +i``) or its file
system goes read-only, the next write to a mapped page (a reader's mark, a
checkpoint on close) kills the process with SIGBUS, which no error handling
can catch (measured: 3 of 12 faults with two servers).  Through ``write()``
the same fault is an error, answered 503.  The price is an fsync per commit
and readers waiting for a commit to finish; a database an older asyncapp left
in WAL mode is switched when a process opens it alone (:func:`_leave_wal`).

A SQLite connection that failed with "read-only", an I/O error or "cannot
open" is discarded, and with it every connection of the pool opened before
(SQLAlchemy's disconnect handling, :func:`_discard_on_fault`); one opened
while the file refused writes was opened read-only and would stay so, so it
serves reads until the file takes writes, then is replaced at its next
checkout.  Opening retries "database is locked" (a process
starting while another holds the lock) instead of failing the start.

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
import contextlib
import functools
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, Table, create_engine, event, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, ExceptionContext, make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError
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
#: SQLite's primary result codes of a file that refuses writes or reads: a connection
#: that met one is discarded (SQLITE_READONLY, SQLITE_IOERR, SQLITE_CANTOPEN).
SQLITE_FAULTS = frozenset({8, 10, 14})
#: Seconds a start goes on retrying "database is locked" while opening.
OPEN_PATIENCE = 60.0


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
        outcome: tuple[T, bool] = await self._submit(self._writer, self._write_counted, fn)
        self._answered(outcome[1])
        return outcome[0]

    async def beat(self, fn: Callable[[Connection], T]) -> T:
        """:meth:`write`, on the heartbeat thread and its own connection.

        Liveness must not wait behind claims and results on the write thread.

        :raises DatabaseUnavailable: if the database is away or refuses the write.
        """
        outcome: tuple[T, bool] = await self._submit(self._beater, self._write_counted, fn)
        self._answered(outcome[1])
        return outcome[0]

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

    def _write_counted(self, fn: Callable[[Connection], T]) -> tuple[T, bool]:
        """:meth:`write_now`, and whether it proved the database takes writes again.

        On SQLite only a changed row proves it: a connection opened while the
        file refused writes begins and commits a write transaction that changes
        nothing (a reaping that found no one to reap).
        """
        assert self._write_engine is not None, "database is not open"
        with self._write_engine.begin() as conn:
            before = _changes(conn)
            result = fn(conn)
            return result, before is None or _changes(conn) != before

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
        return result

    def _answered(self, wrote: bool) -> None:
        """End the outage if a write went through.

        Only a write ends it: a read-only or immutable SQLite file still answers
        reads (the readiness ping, the change feed) while refusing every write.
        """
        if wrote and self.down_since is not None:
            log.warning(
                "the database answers again after %.1f s", time.monotonic() - self.down_since
            )
            self.down_since = None

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
        """Open and migrate, again while another process holds the lock (``busy``)."""
        deadline = time.monotonic() + OPEN_PATIENCE
        while True:
            try:
                return self._open_once(upgrade)
            except DBAPIError as exc:
                if not _lock_wait_timed_out(exc) or time.monotonic() > deadline:
                    raise
                log.info("the database is locked by another process; opening it again")
                time.sleep(0.1)

    def _open_once(self, upgrade: bool) -> None:
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
        try:
            if upgrade and self.dialect == "sqlite":
                migrate(engine)
                _leave_wal(engine)
            elif not upgrade and current_revision(engine) != HEAD_REVISION:
                raise DatabaseUnavailable(
                    "its schema is older than this asyncapp; start the server (or run a "
                    "command that changes something) once to upgrade it"
                )
        except BaseException:
            engine.dispose()
            raise
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


def _changes(conn: Connection) -> int | None:
    """Rows SQLite's connection changed since it opened; None on other databases."""
    if conn.dialect.name != "sqlite":
        return None
    return int(conn.connection.dbapi_connection.total_changes)  # type: ignore[union-attr]


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

    path = url.database if url.database and url.database != ":memory:" else None

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: Any, record: Any) -> None:
        # SQLite opens a file it may not write read-only, for good: known here, and
        # such a connection is replaced once the file takes writes (see _checkout).
        record.info["read_only"] = path is not None and not os.access(path, os.W_OK)
        # Transactions are begun by the "begin" hook below, not by the driver.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout={int(lock_timeout * 1000)}")
        # Nothing mapped (see the module docstring).  A rollback journal mode is
        # this connection's own; WAL is the file's, left to _leave_wal.
        cursor.execute("PRAGMA mmap_size=0")
        if cursor.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            cursor.execute("PRAGMA journal_mode=TRUNCATE")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        write = conn.get_execution_options().get("asyncapp_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    @event.listens_for(engine, "checkout")
    def _checkout(_dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        if record.info.get("read_only") and path is not None and os.access(path, os.W_OK):
            raise DisconnectionError("opened while the file refused writes")

    event.listen(engine, "handle_error", _discard_on_fault)
    return engine


def _discard_on_fault(context: ExceptionContext) -> None:
    """Treat SQLite's read-only, I/O and cannot-open errors as a lost connection.

    SQLAlchemy then closes this connection and every one the pool opened
    before it: a connection opened while the file refused writes is read-only
    for good, and one that met an I/O error may hold a stale view.
    """
    code = getattr(context.original_exception, "sqlite_errorcode", None)
    if code is None or code & 0xFF not in SQLITE_FAULTS:
        return
    context.is_disconnect = True
    # Closing alone is not enough: a statement still referenced (by this error's
    # traceback) keeps the closed connection's transaction, and its lock on the
    # file, until the garbage collector frees it; then nobody could write.
    cursor = getattr(context, "cursor", None)  # not set when the error had none
    with contextlib.suppress(sqlite3.Error):
        if cursor is not None:
            cursor.close()
        if context.connection is not None:
            raw = context.connection.connection.dbapi_connection
            if raw is not None and raw.in_transaction:
                raw.execute("ROLLBACK")


def _leave_wal(engine: Engine) -> None:
    """Switch a database an older asyncapp left in WAL mode to the rollback journal.

    It takes the file alone: while another process has it open the switch is
    refused (``database is locked``), the file stays in WAL (served as before)
    and the next process opening it alone switches it.
    """
    # On the driver's connection: out of any transaction, which the switch needs.
    raw = engine.raw_connection()
    try:
        if raw.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            return
        try:
            mode = raw.execute("PRAGMA journal_mode=TRUNCATE").fetchone()[0]
        except sqlite3.OperationalError as exc:
            mode = _one_line(exc)
        if mode != "truncate":
            log.warning(
                "the SQLite file stays in WAL mode while other processes have it open (%s); "
                "the next process to open it alone switches it to a rollback journal",
                mode,
            )
        else:
            log.info("switched the SQLite file from WAL to a rollback journal")
    finally:
        raw.close()
