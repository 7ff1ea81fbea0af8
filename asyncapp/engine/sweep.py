"""The sweep: due times that no process claimed, taken by whichever process sees them.

Each process plans and claims only its share of the jobs
(:mod:`asyncapp.engine.cache`).  A time whose owner is dead (``kill -9``),
frozen (SIGSTOP, a paused VM) or just behind (its loop or its claims
overloaded) would then wait until the owner is declared dead and the shares
move, ``ASYNCAPP_PROCESS_TIMEOUT`` (10 s by default) and more.  The sweep closes
that gap.  Every :data:`INTERVAL` seconds each process reads, along the index
on ``asyncapp_jobs.next_run_time``, the jobs whose stored next run time is
older than :data:`LATE_AFTER` seconds: a claim advances that time, so these
are times nobody claimed.  It claims them at once, planned from the stored
time with the stored definition, through the same dispatcher path as its own
share.  A due time is so taken within ``LATE_AFTER + INTERVAL`` seconds
(plus one claim) whoever owns it, before the owner is declared dead; and a
backlog in one process is taken by the others, which is what lets a second
process add capacity when one is overloaded.  While every process keeps up,
a sweep is one indexed read that finds nothing.

Exactly once is still the claim's (:mod:`asyncapp.store.claims`): an owner
that wakes or catches up claims the same times and loses them, cheaply (the
claim drops times before the stored next run time, and the unique key refuses
the rest).  Two sweepers racing for one orphan the same way.

Not swept: the jobs of this process's own share (its scheduler has them,
planned or being claimed), jobs whose function this process does not have
(filtered in the query, so a job no process can run does not fill every
sweep), jobs broken here, paused jobs (no stored time), and nothing at all
while the scheduler-wide state is not running, firing is held (the database
away) or the process is stopping.  A job swept here whose claim has not been
written yet is not submitted again for the same stored time within
:data:`RETRY_AFTER` seconds.

Why not acquire due rows with ``FOR UPDATE SKIP LOCKED`` on every pass, as
Quartz's clustered store does?  That is one locking query per pass per
process whether or not anything is late, and a second writer path beside the
claim; partitioned planning needs no database work to decide who fires, and
the sweep reads only what is already late.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy.engine import Connection

from asyncapp.engine.cache import JobCache, Share, owns
from asyncapp.engine.dispatch import Submission
from asyncapp.engine.scheduler import BUDGET, due_of
from asyncapp.errors import DatabaseUnavailable
from asyncapp.model.job import JobDef
from asyncapp.store.database import Database
from asyncapp.store.jobs import JobStore

log = logging.getLogger("asyncapp.cluster")

#: Seconds between two sweeps of one process.
INTERVAL = 0.25
#: Seconds a stored next run time must be past before the sweep takes it.  With
#: :data:`INTERVAL`, a time is taken at most 0.75 s (plus one claim) after it was
#: due: a process killed just after a due time has its next one, a second later,
#: run elsewhere within 2 s of the kill.  An owner that keeps up claims within
#: milliseconds, so the sweep finds nothing; one behind by more loses the rest.
LATE_AFTER = 0.5
#: Seconds before a job swept here, whose stored time has not moved, is swept again.
RETRY_AFTER = 2.0
#: Jobs read per sweep (the oldest first); more are taken by the next sweeps.
LIMIT = 5000


class Sweeper:
    """Takes the due times that the processes owning them did not claim."""

    def __init__(
        self,
        db: Database,
        store: JobStore,
        cache: JobCache,
        submit: Callable[[Submission], None],
        can_fire: Callable[[], bool],
    ) -> None:
        self.db = db
        self.store = store
        self.cache = cache
        self.submit = submit
        self.can_fire = can_fire
        #: Job id -> (stored time it was swept at, monotonic time of the sweep).
        self._swept: dict[str, tuple[float, float]] = {}

    async def forever(self) -> None:
        """Sweep every :data:`INTERVAL` seconds until cancelled."""
        while True:
            await asyncio.sleep(INTERVAL)
            try:
                await self.sweep()
            except DatabaseUnavailable:
                continue
            except Exception:
                log.exception("sweeping for unclaimed due times failed")

    async def sweep(self) -> int:
        """One sweep; returns how many jobs it submitted to be claimed."""
        if not self.can_fire():
            return 0
        clock = time.monotonic()
        self._swept = {
            job_id: swept for job_id, swept in self._swept.items() if clock - swept[1] < RETRY_AFTER
        }
        before = time.time() - LATE_AFTER
        funcs = self.cache.registry.refs()
        # Snapshots: the read below runs on a database thread.
        share, broken, swept = self.cache.share, set(self.cache.broken), dict(self._swept)

        def read(conn: Connection) -> list[JobDef]:
            overdue = self.store.overdue(conn, before, funcs, LIMIT)
            wanted = [
                job_id
                for job_id, stored in overdue
                if wanted_here(job_id, stored, share, broken, swept)
            ]
            found = self.store.some(conn, wanted)
            return [found[job_id] for job_id in wanted if job_id in found]

        jobs = await self.db.read(read)
        if not jobs or not self.can_fire():
            return 0
        submitted = 0
        deadline = time.perf_counter() + BUDGET
        for job in jobs:
            if time.perf_counter() > deadline:
                # Building triggers and planning a few thousand orphans would hold
                # the loop: give it back between slices, as the scheduler does.
                await asyncio.sleep(0)
                deadline = time.perf_counter() + BUDGET
                if not self.can_fire():
                    break
            if job.next_run_time is None or owns(job.id, self.cache.share):
                continue
            entry = self.cache.build(job)
            if entry is None:
                continue
            due = due_of(entry, datetime.now(UTC))
            if not due.times and due.folded is None:
                continue
            self._swept[job.id] = (job.next_run_time.timestamp(), time.monotonic())
            self.submit(Submission(due, entry.job, entry.func, swept=True))
            submitted += 1
        if submitted:
            log.debug("swept %d jobs whose due time no process had claimed", submitted)
        return submitted


def wanted_here(
    job_id: str,
    stored: float,
    share: Share,
    broken: set[str],
    swept: dict[str, tuple[float, float]],
) -> bool:
    """Whether this process sweeps ``job_id``, overdue since ``stored`` (epoch seconds):
    not its own share, not broken here, not swept here at that same stored time lately."""
    if owns(job_id, share) or job_id in broken:
        return False
    earlier = swept.get(job_id)
    return earlier is None or abs(earlier[0] - stored) > 1e-3
