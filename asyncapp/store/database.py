"""The database: one engine, two threads that do all its I/O, and fault translation.

SQLAlchemy's sync engine is used from two dedicated threads, never from the
event loop: APScheduler's ``SQLAlchemyJobStore`` committing on the loop
thread measured 109 ms p99 loop lag at 200 jobs/s.  The *write* thread runs
every transaction that changes something (claims, job changes, run records,
heartbeats), one at a time, which is also what SQLite wants; the *read*
thread serves the API's and dashboard's queries, so listing 10,000 jobs does
not delay a claim.

Every transaction commits before its ``await`` returns: there is no
write-behind.  A driver error meaning "the database is not there or will not
take writes" (refused connection, server gone, read-only or immutable SQLite
file) becomes :class:`~asyncapp.errors.DatabaseUnavailable`; callers answer
503 and apply nothing.  :attr:`Database.down_since` tells the readiness probe;
it is set by any failure and cleared only by a write that succeeds.

On SQLite, write transactions start with ``BEGIN IMMEDIATE`` (the write lock
up front, so two processes never deadlock upgrading a read lock) and the file
runs in WAL mode, so readers in other processes do not block the writer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from asyncapp.errors import DatabaseUnavailable
from asyncapp.store.migrate import current_revision, head_revision, migrate

log = logging.getLogger("asyncapp.db")
T = TypeVar("T")

#: Driver errors that mean the database is away or refuses writes, not a bug of ours.
UNAVAILABLE = (OperationalError, InterfaceError, PoolTimeout)
CONNECT_TIMEOUT = 5


class Database:
    """An engine plus the threads that use it; open it on the loop that awaits it."""

    def __init__(self, url: str) -> None:
        self.url = make_url(url)
        self.dialect = self.url.get_backend_name()
        self.engine: Engine | None = None
        self._write_engine: Engine | None = None
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="asyncapp-db-write")
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="asyncapp-db-read")
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
        if self.engine is not None:
            await asyncio.get_running_loop().run_in_executor(self._writer, self.engine.dispose)
        self._writer.shutdown(wait=True)
        self._reader.shutdown(wait=True)

    async def write(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn(conn)`` in one write transaction on the write thread; committed on return.

        :raises DatabaseUnavailable: if the database is away or refuses the write
            (the transaction is rolled back).
        """
        return await self._submit(self._writer, self.write_now, fn)

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
        if self.down_since is not None and pool is self._writer:
            log.warning(
                "the database answers again after %.1f s", time.monotonic() - self.down_since
            )
            self.down_since = None
        return result

    def _unavailable(self, exc: Exception, outage: bool) -> DatabaseUnavailable:
        detail = _one_line(exc)
        if outage and self.down_since is None:
            self.down_since = time.monotonic()
            log.error("the database is unavailable: %s", detail)
        self.last_error = detail
        return DatabaseUnavailable(detail)

    def _open(self, upgrade: bool) -> None:
        if self.dialect == "sqlite":
            engine = _sqlite_engine(self.url)
        else:
            connect_args = {}
            if "connect_timeout" not in self.url.query:
                connect_args["connect_timeout"] = CONNECT_TIMEOUT
            engine = create_engine(
                self.url,
                pool_pre_ping=True,
                # One connection per database thread, one for the migration lock.
                pool_size=2,
                max_overflow=2,
                connect_args=connect_args,
            )
        if upgrade:
            migrate(engine)
        elif current_revision(engine) != head_revision():
            engine.dispose()
            raise DatabaseUnavailable(
                "its schema is older than this asyncapp; start the server (or run a command "
                "that changes something) once to upgrade it"
            )
        self.engine = engine
        self._write_engine = engine.execution_options(asyncapp_write=True)

    # -- dialect differences ------------------------------------------------------

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


def _one_line(exc: BaseException) -> str:
    cause = getattr(exc, "orig", None) or exc
    lines = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {lines[0] if lines else ''}"


def _sqlite_engine(url: Any) -> Engine:
    if url.database and url.database != ":memory:":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        # Transactions are begun by the "begin" hook below, not by the driver.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        # WAL lets other processes read while one writes.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        write = conn.get_execution_options().get("asyncapp_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine
