"""The processes sharing one database: heartbeats, the dead, and the change feed.

Heartbeats.  Every process has a row in ``asyncapp_processes`` that it
refreshes every ``ASYNCAPP_HEARTBEAT_INTERVAL`` seconds, by the database's
clock.  In the same transaction it removes the rows of processes silent for
``ASYNCAPP_PROCESS_TIMEOUT`` seconds and ends their runs as ``interrupted``
(:func:`asyncapp.store.claims.reap`), so a run left by a killed process is marked
within timeout + interval.  A process that finds its own row gone (it was
frozen longer than the timeout and declared dead) logs it and registers again;
its runs were already ended by others, and its late results are refused (see
:mod:`asyncapp.store.runs`).  The live list also tells the dispatcher which jobs
this process claims first.

Change feed.  Every change to a job or to the scheduler adds a row to
``asyncapp_changes`` (:mod:`asyncapp.store.jobs`).  Each process reads the rows
after the last one it saw: on PostgreSQL when a ``NOTIFY`` arrives (a
``LISTEN`` connection on the loop, through psycopg's async API), and on both
databases every ``ASYNCAPP_SYNC_INTERVAL`` seconds (on SQLite the only
signal; on PostgreSQL a safety net for notifications lost while the
listening connection was down).  Only the changed jobs are reloaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from importlib import metadata
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import Connection

from asyncapp.constants import RUNNING
from asyncapp.errors import DatabaseUnavailable
from asyncapp.model.change import Change
from asyncapp.model.job import JobDef
from asyncapp.model.run import Run, new_id
from asyncapp.model.values import storable
from asyncapp.settings import Settings
from asyncapp.store.claims import reap
from asyncapp.store.database import Database
from asyncapp.store.jobs import CHANNEL, JobStore
from asyncapp.store.processes import Process, read_live
from asyncapp.store.tables import processes_table, runs_table

log = logging.getLogger("asyncapp.cluster")

SERVER = "server"  # a process that fires jobs
CLI = "cli"  # a ``flask jobs run`` process: runs one job, fires nothing


class Membership:
    """This process's heartbeat row, the live processes, and the reaping of dead ones."""

    def __init__(
        self,
        db: Database,
        settings: Settings,
        *,
        role: str,
        info: Callable[[], dict[str, Any]] = dict,
        can_run: Callable[[JobDef], bool] = lambda job: False,
        on_reruns: Callable[[list[tuple[Run, JobDef]]], None] = lambda runs: None,
        on_live: Callable[[list[Process]], None] = lambda live: None,
        local_runs: Callable[[], list[str]] = list,
        on_abandoned: Callable[[list[str]], None] = lambda run_ids: None,
    ) -> None:
        self.db = db
        self.settings = settings
        self.role = role
        self.id = new_id()
        self.live: list[Process] = []
        self.clock = 0.0
        self._info = info
        self._can_run = can_run
        self._on_reruns = on_reruns
        self._on_live = on_live
        self._local_runs = local_runs
        self._on_abandoned = on_abandoned
        self._task: asyncio.Task[None] | None = None
        self.failing = False

    async def join(self) -> None:
        """Register this process (before it claims anything)."""
        await self.db.write(self._register)

    def start(self) -> None:
        self._task = asyncio.create_task(self._beat_forever(), name="asyncapp-heartbeat")

    async def leave(self) -> None:
        """Stop heartbeating and remove this process's row (its runs must have ended)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        try:
            await self.db.write(
                lambda conn: conn.execute(
                    delete(processes_table).where(processes_table.c.id == self.id)
                )
            )
        except DatabaseUnavailable:
            log.warning("could not remove this process's row; others will after the timeout")

    async def beat(self) -> None:
        """One heartbeat: refresh, reap, read the live list (also called by tests)."""
        mine = self._local_runs()
        reruns, ended = await self.db.write(lambda conn: self._beat(conn, mine))
        self._on_live(self.live)
        if ended:
            self._on_abandoned(ended)
        if reruns:
            self._on_reruns(reruns)

    def ranking(self) -> tuple[int, int]:
        """(this process's index, count) among live firing processes."""
        servers = [p.id for p in self.live if p.role == SERVER]
        if self.id not in servers:
            return 0, 1
        return servers.index(self.id), len(servers)

    async def _beat_forever(self) -> None:
        interval = self.settings.heartbeat_interval
        while True:
            await asyncio.sleep(interval)
            try:
                await self.beat()
            except DatabaseUnavailable:
                self.failing = True
                continue
            except Exception:
                self.failing = True
                log.exception("heartbeat failed")
                continue
            self.failing = False

    def _row(self, clock: float) -> dict[str, Any]:
        return {
            "node": storable(self.settings.node_name, 200),
            "host": storable(socket.gethostname(), 200),
            "pid": os.getpid(),
            "role": self.role,
            "heartbeat_at": clock,
            "version": _version(),
            "info": json.dumps(self._info(), default=str),
        }

    def _register(self, conn: Connection) -> None:
        clock = self.db.clock(conn)
        conn.execute(
            insert(processes_table).values(id=self.id, started_at=clock, **self._row(clock))
        )
        self.clock = clock
        self.live = read_live(conn)

    def _beat(
        self, conn: Connection, mine: list[str]
    ) -> tuple[list[tuple[Run, JobDef]], list[str]]:
        clock = self.db.clock(conn)
        refreshed = conn.execute(
            update(processes_table)
            .where(processes_table.c.id == self.id)
            .values(**self._row(clock))
        )
        if not refreshed.rowcount:
            log.error(
                "this process (%s) was presumed dead by the others (no heartbeat for %ss); "
                "its runs in progress were ended as interrupted, and it registers again",
                self.settings.node_name,
                self.settings.process_timeout,
            )
            conn.execute(
                insert(processes_table).values(id=self.id, started_at=clock, **self._row(clock))
            )
        gone = (
            conn.execute(
                delete(processes_table)
                .where(processes_table.c.heartbeat_at < clock - self.settings.process_timeout)
                .returning(processes_table.c.node)
            )
            .scalars()
            .all()
        )
        for node in gone:
            log.warning(
                "process %s stopped heartbeating; its runs in progress are interrupted", node
            )
        node = self.settings.node_name
        reruns = reap(conn, self.db, node=node, process_id=self.id, can_run=self._can_run)
        self.clock = clock
        self.live = read_live(conn)
        # Runs this process runs that the ledger says ended elsewhere: a newer run
        # cancelled them, or this process was presumed dead.  They stop here.
        ended: list[str] = []
        for start in range(0, len(mine), 500):
            chunk = mine[start : start + 500]
            ended.extend(
                conn.execute(
                    select(runs_table.c.id).where(
                        runs_table.c.id.in_(chunk), runs_table.c.status != RUNNING
                    )
                ).scalars()
            )
        return reruns, ended


class ChangeFeed:
    """Follows ``asyncapp_changes`` and hands new changes to ``apply``."""

    def __init__(
        self,
        db: Database,
        store: JobStore,
        interval: float,
        apply: Callable[[list[Change]], Awaitable[None]],
    ) -> None:
        self.db = db
        self.store = store
        self.interval = interval
        self.apply = apply
        #: The id of the last change applied.
        self.seen = 0
        self._signal = asyncio.Event()
        self._progress = asyncio.Condition()
        self._tasks: list[asyncio.Task[None]] = []
        self.failing = False

    async def mark(self) -> None:
        """Start from the latest change (call before loading the jobs)."""
        self.seen = await self.db.read(self.store.last_change_id)

    def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._follow(), name="asyncapp-changes"))
        if self.db.is_postgres:
            self._tasks.append(asyncio.create_task(self._listen(), name="asyncapp-listen"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    def poke(self) -> None:
        """Check for changes now (this process just wrote one, or a claim saw one)."""
        self._signal.set()

    async def check(self) -> None:
        """Read and apply the changes after the last one seen."""
        changes = await self.db.read(lambda conn: self.store.changes_after(conn, self.seen))
        if changes:
            await self.apply(changes)
            self.seen = changes[-1].id
            async with self._progress:
                self._progress.notify_all()

    async def reached(self, change_id: int) -> None:
        """Return once the change ``change_id`` (and all before it) has been applied here."""
        self.poke()
        async with self._progress:
            await self._progress.wait_for(lambda: self.seen >= change_id)

    async def _follow(self) -> None:
        while True:
            # asyncio.timeout, not wait_for: in Python 3.11 a cancel that lands as
            # wait_for's inner wait completes is swallowed, and stop() would hang.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await self._signal.wait()
            self._signal.clear()
            try:
                await self.check()
            except DatabaseUnavailable:
                self.failing = True
                continue
            except Exception:
                self.failing = True
                log.exception("applying changes from the database failed")
                continue
            self.failing = False

    async def _listen(self) -> None:
        import psycopg

        conninfo = self.db.url.set(drivername="postgresql").render_as_string(hide_password=False)
        delay = 0.5
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    conninfo, autocommit=True, connect_timeout=5
                ) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    delay = 0.5
                    self._signal.set()  # catch up on what was missed while not listening
                    async for _ in conn.notifies():
                        self._signal.set()
            except (psycopg.Error, OSError) as exc:
                log.debug("listening for changes failed (%s); retrying in %ss", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10)


def _version() -> str:
    try:
        return metadata.version("Flask-AsyncApp")
    except metadata.PackageNotFoundError:
        return "0"
