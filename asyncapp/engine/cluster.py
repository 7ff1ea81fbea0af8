"""The processes sharing one database: heartbeats, the dead, and the change feed.

Heartbeats.  Every process has a row in ``asyncapp_processes`` that it
refreshes every ``ASYNCAPP_HEARTBEAT_INTERVAL`` seconds, by the database's
clock, on a thread and connection of its own (:meth:`Database.beat`), so
claims and results waiting on the write thread never hold it up.

Reaping.  As often, in a transaction of the write thread, a process removes
the rows of processes silent for ``ASYNCAPP_PROCESS_TIMEOUT`` seconds and ends
their runs as ``interrupted`` (:func:`asyncapp.store.claims.reap`), so a run
left by a killed process is marked within timeout + interval or so.  It does
so only while its own heartbeat is current (:meth:`Membership.current`): a
process that was stalled itself must not declare dead the others stalled by
the same cause.

Own rows.  The same transaction ends as ``interrupted`` the runs the ledger
says this process runs but that have no task here (a claim whose commit was
reported as failed although it succeeded), so they do not block their job.

Fencing.  A process that finds its own row gone (it was frozen longer than the
timeout and declared dead) logs it, abandons every run it has (their tasks are
cancelled; others ended them, and may be running them again), and rejoins
under a new id: its incarnation.  Claims are made only by a process whose row
exists (:func:`asyncapp.store.processes.registered`), and run ends only for
runs the ending process claimed, so nothing of the old incarnation counts as
its own.  The live list also gives this process its share of the jobs
(:meth:`Membership.ranking`; see :mod:`asyncapp.engine.cache`).

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
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import Connection

from asyncapp import metrics
from asyncapp.constants import INTERRUPTED, RUNNING, VERSION
from asyncapp.errors import DatabaseUnavailable
from asyncapp.model.change import Change
from asyncapp.model.job import JobDef
from asyncapp.model.run import Run, new_id
from asyncapp.model.values import storable
from asyncapp.settings import Settings
from asyncapp.store.claims import interrupt_strays, reap
from asyncapp.store.database import Database
from asyncapp.store.jobs import CHANNEL, JobStore
from asyncapp.store.processes import Process, read_live, registered
from asyncapp.store.tables import processes_table, runs_table

log = logging.getLogger("asyncapp.cluster")

#: Seconds after its claim a run of this process with no task here is a stray (a claim
#: just committed has its task a moment later).
STRAY_GRACE = 5.0
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
        on_fenced: Callable[[str], None] = lambda new_id: None,
    ) -> None:
        self.db = db
        self.settings = settings
        self.role = role
        #: This incarnation's id; a new one after this process was presumed dead.
        self.id = new_id()
        self.live: list[Process] = []
        self.clock = 0.0
        self._info = info
        self._can_run = can_run
        self._on_reruns = on_reruns
        self._on_live = on_live
        self._local_runs = local_runs
        self._on_abandoned = on_abandoned
        self._on_fenced = on_fenced
        self._tasks: list[asyncio.Task[None]] = []
        #: Monotonic times: the last heartbeat written, and the start of the current
        #: stretch of heartbeats with no gap longer than :attr:`max_gap`.
        self._last_beat: float | None = None
        self._current_since = 0.0
        self.failing = False

    @property
    def max_gap(self) -> float:
        """Seconds between two heartbeats past which this process counts itself stalled."""
        return self.settings.process_timeout / 2

    async def join(self) -> None:
        """Register this process (before it claims anything)."""
        await self.db.beat(self._register)
        self._beaten()

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._forever(self.beat, "heartbeat"), name="asyncapp-heartbeat"),
            asyncio.create_task(self._forever(self.watch, "reaping"), name="asyncapp-reaper"),
        ]

    async def leave(self) -> None:
        """Stop heartbeating and remove this process's row (its runs must have ended)."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        try:
            await self.db.write(
                lambda conn: conn.execute(
                    delete(processes_table).where(processes_table.c.id == self.id)
                )
            )
        except DatabaseUnavailable:
            log.warning("could not remove this process's row; others will after the timeout")

    async def beat(self) -> None:
        """One heartbeat: refresh this process's row, on the database's heartbeat thread
        and connection (never behind claims and results), and read the live list.

        A process whose row is gone was presumed dead by the others, who ended its
        runs: it is fenced.  It abandons every run it has (cancels their tasks),
        and rejoins under a new id, so nothing it claimed before counts as its own.
        """
        registered = await self.db.beat(self._refresh)
        if not registered:
            old, self.id = self.id, new_id()
            log.error(
                "this process (%s, %s) was presumed dead by the others (no heartbeat for %ss); "
                "its runs were ended as interrupted elsewhere: it abandons them all and "
                "registers again as %s",
                self.settings.node_name,
                old,
                self.settings.process_timeout,
                self.id,
            )
            self._on_fenced(self.id)
            await self.db.beat(self._register)
            self._last_beat = None  # the stretch of current heartbeats starts again
        self._beaten()
        self._on_live(self.live)

    async def watch(self) -> None:
        """Reconcile this process's runs with the ledger; reap dead processes, if its
        own heartbeat is current.

        A process judges the others only after its own heartbeats have been current
        (no gap longer than :attr:`max_gap`) for a whole process timeout: one that
        was stalled itself cannot tell a dead process from one stalled by the same
        cause (a database restart, a held SQLite write lock), until all have had the
        time to beat again.
        """
        mine = self._local_runs()
        reaped: list[str] = []
        reruns, ended = await self.db.write(lambda conn: self._reap(conn, mine, reaped))
        for func in reaped:  # committed: count the runs this process ended for good
            metrics.RUNS.labels(func, INTERRUPTED).inc()
        if ended:
            self._on_abandoned(ended)
        if reruns:
            self._on_reruns(reruns)

    def current(self) -> bool:
        """Whether this process's own heartbeat is current enough to judge the others."""
        if self._last_beat is None:
            return False
        now = time.monotonic()
        return (
            now - self._last_beat <= self.max_gap
            and now - self._current_since >= self.settings.process_timeout
        )

    def ranking(self) -> tuple[int, int]:
        """(this process's index, count) among live firing processes."""
        servers = [p.id for p in self.live if p.role == SERVER]
        if self.id not in servers:
            return 0, 1
        return servers.index(self.id), len(servers)

    async def _forever(self, step: Callable[[], Awaitable[None]], what: str) -> None:
        interval = self.settings.heartbeat_interval
        while True:
            await asyncio.sleep(interval)
            try:
                await step()
            except DatabaseUnavailable:
                if what == "heartbeat":
                    self.failing = True
                continue
            except Exception:
                if what == "heartbeat":
                    self.failing = True
                log.exception("%s failed", what)
                continue
            if what == "heartbeat":
                self.failing = False

    def _beaten(self) -> None:
        now = time.monotonic()
        if self._last_beat is None or now - self._last_beat > self.max_gap:
            self._current_since = now
        self._last_beat = now

    def _row(self, clock: float) -> dict[str, Any]:
        return {
            "node": storable(self.settings.node_name, 200),
            "host": storable(socket.gethostname(), 200),
            "pid": os.getpid(),
            "role": self.role,
            "heartbeat_at": clock,
            "version": VERSION,
            "info": json.dumps(self._info(), default=str),
        }

    def _register(self, conn: Connection) -> None:
        clock = self.db.clock(conn)
        conn.execute(
            insert(processes_table).values(id=self.id, started_at=clock, **self._row(clock))
        )
        self.clock = clock
        self.live = read_live(conn)

    def _refresh(self, conn: Connection) -> bool:
        """Refresh this process's row; False if it is gone (presumed dead)."""
        clock = self.db.clock(conn)
        refreshed = conn.execute(
            update(processes_table)
            .where(processes_table.c.id == self.id)
            .values(**self._row(clock))
        )
        if not refreshed.rowcount:
            return False
        self.clock = clock
        self.live = read_live(conn)
        return True

    def _reap(
        self, conn: Connection, mine: list[str], reaped: list[str]
    ) -> tuple[list[tuple[Run, JobDef]], list[str]]:
        if not registered(conn, self.db, self.id):
            return [], []  # presumed dead: the next heartbeat fences this process
        reruns: list[tuple[Run, JobDef]] = []
        # Judged here, on the write thread, when the transaction runs: it may have
        # waited (behind a claim on a held lock) while this process stalled.
        if self.current():
            reruns = self._reap_dead(conn, reaped)
        claimed_before = datetime.now(UTC) - timedelta(seconds=STRAY_GRACE)
        for run_id in interrupt_strays(conn, self.id, mine, claimed_before):
            log.warning("run %s was claimed here but never ran here; it is interrupted", run_id)
        # Runs this process runs that the ledger says ended elsewhere: a newer run
        # cancelled them.  They stop here.  (Runs of this process that the ledger
        # says run here but that have no task here are the strays above.)
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

    def _reap_dead(self, conn: Connection, reaped: list[str]) -> list[tuple[Run, JobDef]]:
        clock = self.db.clock(conn)
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
        reaped.clear()  # a retried transaction starts over
        return reap(
            conn, self.db, node=node, process_id=self.id, can_run=self._can_run, ended=reaped
        )


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
