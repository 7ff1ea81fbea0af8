"""The firing engine of a server process: what turns stored jobs into claimed due times.

It owns the :class:`~asyncapp.engine.cache.JobCache` of schedulable jobs (this
process's share of them in its index, re-sharded by :meth:`FiringEngine.reshard`
when the live processes change), the
:class:`~asyncapp.engine.scheduler.Scheduler` that plans their due times and
hands them to the dispatcher, the :class:`~asyncapp.engine.sweep.Sweeper` that
takes due times other processes left unclaimed, the
:class:`~asyncapp.engine.cluster.ChangeFeed`
that keeps the cache current with what other processes commit, and the
bookkeeping that names why a time was missed (the outages and pauses this
process saw, in :class:`~asyncapp.store.claims.Reasons`).

It is handed its collaborators at construction and at :meth:`FiringEngine.open`
and calls nothing above it.  The dispatcher reports back through the
:class:`~asyncapp.engine.dispatch.Hooks` this engine implements: a claim that
found a job changed (:meth:`stale`), the scheduler halted (:meth:`halted`) or the
database away (:meth:`database_down`, which holds firing until a write succeeds
again, then catches up).  The runtime (the composition root) builds it for a
``role="server"`` process only and passes the service's committed changes on
(:meth:`applied`, :meth:`state_applied`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from typing import Any

from apscheduler.schedulers.base import STATE_RUNNING

from asyncapp.constants import (
    JOB_PAUSED,
    REMOVED,
    SCHEDULER_PAUSED,
    SCHEDULER_RUNNING,
    SchedulerState,
)
from asyncapp.engine.cache import JobCache, Share
from asyncapp.engine.cluster import ChangeFeed
from asyncapp.engine.dispatch import Dispatcher, Hooks, Submission
from asyncapp.engine.scheduler import Scheduler
from asyncapp.engine.sweep import MAX_BACKLOG, Sweeper
from asyncapp.errors import DatabaseUnavailable, NotRunning
from asyncapp.model.change import Change
from asyncapp.model.job import JobDef
from asyncapp.model.tasks import Registry
from asyncapp.settings import Settings
from asyncapp.store.interface import Reasons, Store

log = logging.getLogger("asyncapp.runtime")

#: Removals remembered for runs claimed ahead of their time: past this many, those older
#: than :data:`REMOVAL_MEMORY` seconds (far longer than any claim lead) are forgotten.
REMOVALS_KEPT = 1000
REMOVAL_MEMORY = 60.0
#: Seconds between attempts to reach the database again after a failed claim.
RECONNECT_DELAYS = (0.5, 1.0, 2.0, 5.0)


class FiringEngine(Hooks):
    """Cache, scheduler, change feed and missed-time bookkeeping of one firing process."""

    def __init__(self, store: Store, settings: Settings, tasks: Registry, reasons: Reasons) -> None:
        self.store = store
        self.reasons = reasons
        self.cache = JobCache(tasks, settings.zone)
        self.feed = ChangeFeed(store, settings.sync_interval, self._apply)
        self.lead = settings.claim_lead
        self._scheduler: Scheduler | None = None
        self._paused_since: datetime | None = None
        self._reconnecting: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        #: Jobs removed lately (monotonic time of the removal), for :meth:`not_starting`.
        self._removed: dict[str, float] = {}
        self._sweeping: asyncio.Task[None] | None = None

    @property
    def scheduler(self) -> Scheduler:
        """:raises NotRunning: before :meth:`open`."""
        if self._scheduler is None:
            raise NotRunning("the scheduler")
        return self._scheduler

    @property
    def state_name(self) -> str:
        """The scheduler's state as the health checks show it; ``none`` before it starts."""
        return "none" if self._scheduler is None else self._scheduler.state_name

    async def open(
        self,
        stack: AsyncExitStack,
        dispatcher: Dispatcher,
        declare: Callable[[], Awaitable[None]],
        share: Share = (0, 1),
    ) -> None:
        """Load the jobs and start firing ``share`` of them through ``dispatcher``,
        and sweeping for due times the other shares' owners leave unclaimed.

        ``declare`` writes the jobs the code declares; it runs after the feed's
        starting point is marked and before the jobs are loaded, so nothing it
        commits is missed.  Closing ``stack`` stops the feed, the sweep and the
        scheduler.
        """
        await self.feed.mark()
        await declare()
        jobs, state = await self.store.jobs_and_state()
        self.cache.share = share
        self.cache.load(list(jobs.values()))
        scheduler = self._scheduler = Scheduler(self.cache, dispatcher, lead=self.lead)
        scheduler.stored_state = state
        scheduler.start(paused=state != SCHEDULER_RUNNING)
        if state != SCHEDULER_RUNNING:
            self._paused_since = datetime.now(UTC)
        stack.callback(self._shutdown)
        self.feed.start()
        stack.push_async_callback(self.feed.stop)
        sweeper = Sweeper(self.store, self.cache, dispatcher.submit, self._can_sweep)
        self._sweeping = asyncio.create_task(sweeper.forever(), name="asyncapp-sweep")
        stack.push_async_callback(self._stop_sweeping)

    def reshard(self, share: Share) -> None:
        """Fire ``share`` of the jobs from now on (the live processes changed)."""
        before = self.cache.share
        joined = self.cache.reshard(share)
        if share != before:
            log.info(
                "this process now fires share %d of %d: %d jobs", *share, len(self.cache.entries())
            )
        if joined:
            # Their stored next run time moved on while another process fired them.
            self._spawn(self._reload(set(joined)))

    def _can_sweep(self) -> bool:
        scheduler = self._scheduler
        return (
            scheduler is not None
            and scheduler.running
            and scheduler.state == STATE_RUNNING
            and not scheduler.held
            and scheduler.stored_state == SCHEDULER_RUNNING
            and scheduler.dispatcher.backlog < MAX_BACKLOG
        )

    async def _stop_sweeping(self) -> None:
        task, self._sweeping = self._sweeping, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def summary(self) -> dict[str, Any]:
        """The scheduler's state and the jobs cached, for this process's heartbeat row."""
        return {
            "state": self.state_name,
            "jobs": self.cache.known,
            "jobs_owned": len(self.cache.entries()),
            "share": list(self.cache.share),
            "broken_jobs": len(self.cache.broken),
        }

    def stop_firing(self) -> None:
        """Plan nothing more (shutdown: running jobs are drained next)."""
        for task in list(self._background):
            task.cancel()
        if self._sweeping is not None:
            self._sweeping.cancel()
        if self._scheduler is not None and self._scheduler.running:
            self._scheduler.pause()

    def _shutdown(self) -> None:
        if self._scheduler is not None and self._scheduler.running:
            self._scheduler.shutdown()

    # -- committed changes, from this process's service or the change feed -----------

    def applied(self, jobs: Iterable[JobDef], removed: Iterable[str]) -> None:
        """These committed rows replace the cached ones; ``removed`` are gone."""
        for job in jobs:
            self.cache.put(job)
        for job_id in removed:
            self._drop(job_id)
        self._wake()

    def state_applied(self, state: SchedulerState) -> None:
        """The scheduler-wide state was committed as ``state``: follow it, noting pauses."""
        if self._scheduler is None:
            return
        now = datetime.now(UTC)
        if state != SCHEDULER_RUNNING and self._paused_since is None:
            self._paused_since = now
        elif state == SCHEDULER_RUNNING and self._paused_since is not None:
            self.reasons.pauses.append((self._paused_since, now))
            self._paused_since = None
        self._scheduler.follow(state)

    async def _apply(self, changes: list[Change]) -> None:
        job_ids = {change.job_id for change in changes if change.job_id is not None}
        await self._reload(job_ids)

    async def _reload(self, job_ids: set[str]) -> None:
        """Reload ``job_ids`` and the scheduler-wide state from the database."""
        ids = sorted(job_ids)
        found, state = await self.store.jobs_and_state(ids)
        for job_id in ids:
            if job_id in found:
                self.cache.put(found[job_id])
            else:
                self._drop(job_id)
        self.state_applied(state)
        self._wake()

    def _drop(self, job_id: str) -> None:
        """Forget ``job_id``, removed from the database; remember the removal a while for
        :meth:`not_starting` (a finished one-shot job leaves the cache too, and runs)."""
        self.cache.drop(job_id)
        now = time.monotonic()
        if len(self._removed) > REMOVALS_KEPT:
            self._removed = {
                key: at for key, at in self._removed.items() if now - at < REMOVAL_MEMORY
            }
        self._removed[job_id] = now

    def _wake(self) -> None:
        if self._scheduler is not None and self._scheduler.running:
            self._scheduler.wakeup()

    # -- asyncapp.engine.dispatch.Hooks -------------------------------------------------

    def job_for(self, job_id: str) -> tuple[JobDef, Callable[..., Any]] | None:
        entry = self.cache.entry(job_id)
        return None if entry is None else (entry.job, entry.func)

    def not_starting(self, job: JobDef) -> str | None:
        entry = self.cache.entry(job.id)
        if entry is None:
            return REMOVED if job.id in self._removed else None
        if entry.job.paused:
            return JOB_PAUSED
        if self.state_name != SCHEDULER_RUNNING:
            return SCHEDULER_PAUSED
        return None

    def stale(self, job_ids: set[str]) -> None:
        self._spawn(self._reload(job_ids))

    def halted(self, submissions: list[Submission]) -> None:
        self._restore(submissions)
        self._spawn(self._reload(set()))

    def database_down(self, submissions: list[Submission]) -> None:
        self._restore(submissions)
        if self._scheduler is not None:
            self._scheduler.hold()
        if self._reconnecting is None or self._reconnecting.done():
            self._reconnecting = self._spawn(self._reconnect(datetime.now(UTC)))

    def _restore(self, submissions: list[Submission]) -> None:
        for submission in submissions:
            due = submission.due
            self.cache.restore(submission.job, due.folded[0] if due.folded else due.times[0])

    async def _reconnect(self, since: datetime) -> None:
        """Retry the database until it answers a write; then fire again, catching up."""
        attempt = 0
        while True:
            await asyncio.sleep(RECONNECT_DELAYS[min(attempt, len(RECONNECT_DELAYS) - 1)])
            attempt += 1
            try:
                await self.store.ping_write()
            except DatabaseUnavailable:
                continue
            break
        self.reasons.outages.append((since, datetime.now(UTC)))
        await self._reload(set())
        if self._scheduler is not None:
            self._scheduler.release()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if isinstance(exc, DatabaseUnavailable):
            log.warning("reloading jobs failed: the database is unavailable")
        elif exc is not None:
            log.error("a background task failed", exc_info=exc)
