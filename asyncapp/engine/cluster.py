"""The processes sharing one database: heartbeats, the dead, and the change feed.

Heartbeats.  Every process has a row in ``asyncapp_processes`` that it
refreshes every ``ASYNCAPP_HEARTBEAT_INTERVAL`` seconds, by the database's
clock, on a thread and connection of its own
(:meth:`~asyncapp.store.interface.Store.refresh`), so claims and results
waiting on the write thread never hold it up.

Reaping.  As often, in a transaction of the write thread, a process removes
the rows of processes silent for ``ASYNCAPP_PROCESS_TIMEOUT`` seconds and ends
their runs as ``unknown`` (:func:`asyncapp.store.claims.reap`: the end was never
recorded, and the run may have finished), so a run left by a killed process is
marked within timeout + interval or so.  It does
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
from typing import Any, Protocol

from asyncapp import metrics
from asyncapp.constants import UNKNOWN, VERSION
from asyncapp.errors import DatabaseUnavailable
from asyncapp.model.change import Change
from asyncapp.model.job import JobDef
from asyncapp.model.run import Run, new_id
from asyncapp.model.tasks import Registry
from asyncapp.model.values import storable
from asyncapp.settings import Settings
from asyncapp.store.interface import Heartbeat, Process, ProcessRow, Store

log = logging.getLogger("asyncapp.cluster")

#: Seconds after its claim a run of this process with no task here is a stray (a claim
#: just committed has its task a moment later).
STRAY_GRACE = 5.0
SERVER = "server"  # a process that fires jobs
CLI = "cli"  # a ``flask jobs run`` process: runs one job, fires nothing


class Runs(Protocol):
    """The runs of this process, as membership needs them (the dispatcher)."""

    @property
    def running(self) -> int: ...

    def run_ids(self) -> list[str]: ...

    def start_runs(self, runs: list[Run], job: JobDef, func: Callable[..., Any]) -> None: ...

    def abandon(self, run_ids: list[str]) -> None:
        """Stop these runs: another process ended them."""

    def fence(self, process_id: str) -> None:
        """Abandon every run; claim as ``process_id`` from now on."""


class Results(Protocol):
    """The run ends of this process not written yet (the recorder)."""

    process_id: str

    @property
    def pending(self) -> int: ...

    def queued(self) -> list[str]:
        """Ids of the runs whose end is queued."""
        ...


class Firing(Protocol):
    """What a firing process adds to its heartbeat row (the firing engine)."""

    def summary(self) -> dict[str, Any]:
        """The scheduler's state and the jobs cached."""
        ...

    def reshard(self, share: tuple[int, int]) -> None:
        """Fire ``share`` (this process's index, live firing processes) of the jobs."""


class Peers(Protocol):
    """What a firing process agrees on with the others through the heartbeat rows (the
    fingerprint of the jobs its code declares: :mod:`asyncapp.service.declarations`)."""

    def heartbeat_info(self) -> dict[str, Any]:
        """Added to this process's heartbeat row."""
        ...

    def live_changed(self, live: list[Process]) -> None:
        """The live processes, after each heartbeat."""


class Membership:
    """This process's heartbeat row, the live processes, and the reaping of dead ones.

    It is handed the process's runs (the dispatcher), its queued results (the
    recorder) and, in a firing process, the firing engine: what it learns (the
    live list, fencing, runs ended elsewhere, runs taken over from the dead)
    goes down to them.
    """

    def __init__(
        self,
        store: Store,
        settings: Settings,
        *,
        process_id: str,
        role: str,
        tasks: Registry,
        runs: Runs,
        results: Results,
        firing: Firing | None = None,
        peers: Peers | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.role = role
        #: This incarnation's id; a new one after this process was presumed dead.
        self.id = process_id
        self.live: list[Process] = []
        self.clock = 0.0
        self.tasks = tasks
        self.runs = runs
        self.results = results
        self.firing = firing
        self.peers = peers
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

    def info(self) -> dict[str, Any]:
        """What this process says of itself in its heartbeat row and health checks."""
        summary = self.firing.summary() if self.firing is not None else {}
        return {
            "state": summary.get("state", "none"),
            "runs_in_progress": self.runs.running,
            "results_pending": self.results.pending,
            "jobs": summary.get("jobs", 0),
            "jobs_owned": summary.get("jobs_owned", 0),
            "share": summary.get("share", [0, 1]),
            "broken_jobs": summary.get("broken_jobs", 0),
            **(self.peers.heartbeat_info() if self.peers is not None else {}),
        }

    async def join(self) -> None:
        """Register this process (before it claims anything)."""
        self._seen(await self.store.register(self.id, self._row()))
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
            await self.store.unregister(self.id)
        except DatabaseUnavailable:
            log.warning("could not remove this process's row; others will after the timeout")

    async def beat(self) -> None:
        """One heartbeat: refresh this process's row, on the database's heartbeat thread
        and connection (never behind claims and results), and read the live list.

        A process whose row is gone was presumed dead by the others, who ended its
        runs: it is fenced.  It abandons every run it has (cancels their tasks),
        and rejoins under a new id, so nothing it claimed before counts as its own.
        """
        beat = await self.store.refresh(self.id, self._row())
        if beat is None:
            old, self.id = self.id, new_id()
            log.error(
                "this process (%s, %s) was presumed dead by the others (no heartbeat for %ss); "
                "its runs were ended as unknown elsewhere: it abandons them all and "
                "registers again as %s",
                self.settings.node_name,
                old,
                self.settings.process_timeout,
                self.id,
            )
            self.runs.fence(self.id)
            self.results.process_id = self.id
            beat = await self.store.register(self.id, self._row())
            self._last_beat = None  # the stretch of current heartbeats starts again
        self._seen(beat)
        self._beaten()
        if self.firing is not None:
            self.firing.reshard(self.ranking())

    async def watch(self) -> None:
        """Reconcile this process's runs with the ledger; reap dead processes, if its
        own heartbeat is current.

        A process judges the others only after its own heartbeats have been current
        (no gap longer than :attr:`max_gap`) for a whole process timeout: one that
        was stalled itself cannot tell a dead process from one stalled by the same
        cause (a database restart, a held SQLite write lock), until all have had the
        time to beat again.
        """
        # Runs ended here whose end is still queued count as here: their end is
        # written after (the write thread runs transactions in order of submission).
        mine = self.runs.run_ids() + self.results.queued()
        reaped = await self.store.reap(
            self.id,
            node=self.settings.node_name,
            running_here=mine,
            judge=self.current,
            process_timeout=self.settings.process_timeout,
            stray_before=datetime.now(UTC) - timedelta(seconds=STRAY_GRACE),
            can_run=lambda job: job.func in self.tasks,
        )
        for func in reaped.interrupted:  # committed: count the runs this process ended
            metrics.RUNS.labels(func, UNKNOWN).inc()
        if reaped.ended:
            self.runs.abandon(reaped.ended)
        for run, job in reaped.reruns:
            log.warning(
                "job %s run %s: taking it over from a dead process (attempt %d)",
                job.id,
                run.id,
                run.attempt,
            )
            self.runs.start_runs([run], job, self.tasks.resolve(job.func).func)

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

    def _seen(self, beat: Heartbeat) -> None:
        self.clock = beat.clock
        self.live = beat.live
        if self.peers is not None:
            self.peers.live_changed(self.live)

    def _row(self) -> ProcessRow:
        """This process's heartbeat row, but for the time (the database's clock)."""
        return {
            "node": storable(self.settings.node_name, 200),
            "host": storable(socket.gethostname(), 200),
            "pid": os.getpid(),
            "role": self.role,
            "version": VERSION,
            "info": json.dumps(self.info(), default=str),
        }


class ChangeFeed:
    """Follows ``asyncapp_changes`` and hands new changes to ``apply``."""

    def __init__(
        self,
        store: Store,
        interval: float,
        apply: Callable[[list[Change]], Awaitable[None]],
    ) -> None:
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
        self.seen = await self.store.last_change_id()

    def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._follow(), name="asyncapp-changes"))
        if self.store.listens:
            self._tasks.append(
                asyncio.create_task(self.store.listen(self._signal.set), name="asyncapp-listen")
            )

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
        changes = await self.store.changes_after(self.seen)
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
