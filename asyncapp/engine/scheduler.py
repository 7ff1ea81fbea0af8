"""APScheduler's AsyncIOScheduler, firing through claims.

The scheduler keeps what APScheduler does well: the timer on the server loop
(``call_later`` to the next due time, ``wakeup`` after a change), the
running/paused states, and triggers that compute fire times.  What happens at
a wakeup is ours (:meth:`Scheduler._process_jobs`, the method APScheduler
3.11's timer calls; read from ``apscheduler/schedulers/base.py``, pinned by
``apscheduler>=3.11.2,<4``):

- due jobs come from this process's :class:`~asyncapp.engine.cache.JobCache`,
  which indexes only this process's share of the jobs (due times of the
  other shares are planned by their owners, or taken by the sweep,
  :mod:`asyncapp.engine.sweep`, when an owner falls behind);
- each job's due times are planned here (every one of them: coalescing and
  lateness are decided in the claim, so that the times a job skips are
  recorded too, not silently dropped as APScheduler's coalesce does);
- they go to the :class:`~asyncapp.engine.dispatch.Dispatcher`, which claims them in
  the database, instead of to an executor;
- the cache moves on to the next time right away, so the next wakeup does
  not submit them again; if the claim cannot be written, the dispatcher puts
  them back.

One wakeup holds the loop for at most :data:`BUDGET` seconds: with thousands
of jobs due at once, it returns after a slice and is called again at once,
so requests and running jobs get the loop in between and the first claim is
written while later jobs are still being planned.

The scheduler runs in UTC, not in the host's local zone that APScheduler
defaults to: UTC has no DST fall-back, at which APScheduler before 3.11.2 could
loop forever.  Cron triggers carry their own time zone.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from apscheduler.schedulers import SchedulerNotRunningError
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.schedulers.base import STATE_PAUSED, STATE_RUNNING, TIMEOUT_MAX, BaseScheduler

from asyncapp import compat
from asyncapp.constants import (
    SCHEDULER_PAUSED_STATE,
    SCHEDULER_RUNNING,
    SCHEDULER_STOPPED,
    SchedulerState,
)
from asyncapp.engine.cache import Entry, JobCache
from asyncapp.engine.dispatch import Dispatcher, Submission
from asyncapp.model.triggers import fire_time_after
from asyncapp.store.claims import Due

#: Seconds one wakeup may hold the loop planning due jobs.
BUDGET = 0.01
#: Due times of one job planned per wakeup (more are planned at the next).
MAX_TIMES = 1000
#: Times too late to run that are recorded one by one before the rest are folded.
FOLD_AFTER = 100


class Scheduler(AsyncIOScheduler):
    """An AsyncIOScheduler whose wakeups hand due jobs to the dispatcher."""

    def __init__(self, cache: JobCache, dispatcher: Dispatcher, *, lead: float = 0.0) -> None:
        super().__init__(jobstores={"default": cache}, timezone=UTC)
        self.cache = cache
        self.dispatcher = dispatcher
        #: Seconds ahead of its time that a due time is planned and claimed.
        self.lead = timedelta(seconds=lead)
        #: The scheduler-wide state, as this process last read it from the database.
        self.stored_state: SchedulerState = SCHEDULER_RUNNING
        #: True while the database is unavailable: nothing is planned or claimed.
        self.held = False

    def shutdown(self, wait: bool = False) -> None:
        """Stop now (AsyncIOScheduler defers it with ``call_soon_threadsafe``)."""
        if not self.running:
            raise SchedulerNotRunningError
        BaseScheduler.shutdown(self, wait=False)
        compat.stop_timer(self)

    def follow(self, state: SchedulerState) -> None:
        """Fire or not, as the stored scheduler-wide state says."""
        self.stored_state = state
        if not self.running:
            return
        if state == SCHEDULER_RUNNING and self.state == STATE_PAUSED and not self.held:
            self.resume()
        elif state != SCHEDULER_RUNNING and self.state == STATE_RUNNING:
            self.pause()

    def hold(self) -> None:
        """Stop firing until :meth:`release` (the database is unavailable)."""
        self.held = True

    def release(self) -> None:
        self.held = False
        self.follow(self.stored_state)
        if self.state == STATE_RUNNING:
            self.wakeup()

    @property
    def state_name(self) -> str:
        """``running``, ``paused`` or ``stopped``, as stored; ``stopped`` before start."""
        if not self.running:
            return SCHEDULER_STOPPED
        if self.stored_state != SCHEDULER_RUNNING:
            return self.stored_state
        return SCHEDULER_PAUSED_STATE if self.state == STATE_PAUSED else SCHEDULER_RUNNING

    def _process_jobs(self) -> float | None:  # an internal: asyncapp.compat names it
        if self.state == STATE_PAUSED or self.held:
            return None
        now = datetime.now(UTC)
        horizon = now + self.lead
        deadline = time.perf_counter() + BUDGET
        for entry in self.cache.get_due_jobs(horizon):
            due = due_of(entry, now, horizon)
            self.dispatcher.submit(Submission(due, entry.job, entry.func))
            self.cache.advance(entry, due.next_run_time)
            if time.perf_counter() > deadline:
                return 0.0
        next_run = self.cache.get_next_run_time()
        if next_run is None:
            return None
        ahead = next_run - self.lead - datetime.now(UTC)
        wait: float = min(max(ahead.total_seconds(), 0.0), TIMEOUT_MAX)
        return wait


def due_of(entry: Entry, now: datetime, horizon: datetime | None = None) -> Due:
    """What to claim for ``entry`` at ``now``: its due times up to ``horizon`` (default
    ``now``; later with the claim lead) as :func:`plan` finds them."""
    times, folded, next_time = plan(entry, now, horizon)
    job = entry.job
    return Due(
        job.id,
        job.version,
        times,
        next_time,
        coalesce=job.coalesce,
        misfire_grace_time=job.misfire_grace_time,
        overlap=job.overlap,
        folded=folded,
        ahead=bool(times) and times[-1] > now,
    )


def plan(
    entry: Entry, now: datetime, horizon: datetime | None = None
) -> tuple[list[datetime], tuple[datetime, datetime] | None, datetime | None]:
    """The due times of ``entry`` up to ``horizon`` (default ``now``): (times, folded
    range, next time after them).

    Times older than the job's misfire grace cannot run; after the first
    :data:`FOLD_AFTER` of them, the rest (say, a day of a 1 s job while no
    process was up) become one range, found in one trigger computation
    instead of one per time.
    """
    grace = entry.job.misfire_grace_time
    cutoff = None if grace is None else now - timedelta(seconds=grace)
    times: list[datetime] = []
    folded: tuple[datetime, datetime] | None = None
    horizon = now if horizon is None else horizon
    moment = entry.next_run_time
    while moment is not None and moment <= horizon and len(times) < MAX_TIMES:
        if folded is None and cutoff is not None and moment < cutoff and len(times) >= FOLD_AFTER:
            folded = (moment, cutoff)
            moment = fire_time_after(entry.trigger, None, cutoff)
            continue
        times.append(moment)
        moment = fire_time_after(entry.trigger, moment, horizon)
    return times, folded, moment
