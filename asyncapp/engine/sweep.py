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

Each late time is first left to one process, its *backup*: of the live
processes other than its owner, the one a second hash of the job id picks.
Only once it is :data:`ANYONE_AFTER` seconds late may every process take it
(the backup is dead or behind too).  Without this, when every process falls
behind together (more due times than the machine can claim: 100,000 jobs a
minute on two cores, measured with ``python -m bench.simulate``), every
process swept every other's backlog, and the duplicate claims, all but one
lost, made the database the bottleneck: 189k swept attempts against 103k of
the shares' own in one minute.  Nor does a process sweep while its own claims
are backed up (:data:`MAX_BACKLOG` due jobs waiting for the claim being
written): it would only add to what it cannot claim in time.

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
import zlib
from collections.abc import Callable
from datetime import UTC, datetime

from asyncapp.engine.cache import JobCache, Share, owns
from asyncapp.engine.dispatch import Submission
from asyncapp.engine.scheduler import BUDGET, due_of
from asyncapp.errors import DatabaseUnavailable
from asyncapp.store.interface import Store

log = logging.getLogger("asyncapp.cluster")

#: Seconds between two sweeps of one process.
INTERVAL = 0.25
#: Seconds a stored next run time must be past before the sweep takes it.  With
#: :data:`INTERVAL`, a time is taken at most 0.75 s (plus one claim) after it was
#: due: a process killed just after a due time has its next one, a second later,
#: run elsewhere within 2 s of the kill.  An owner that keeps up claims within
#: milliseconds, so the sweep finds nothing; one behind by more loses the rest.
LATE_AFTER = 0.5
#: Seconds late past which any process, not only the job's backup, takes a time.
ANYONE_AFTER = 1.25
#: Due jobs waiting to be claimed in this process past which it does not sweep.
MAX_BACKLOG = 1000
#: Seconds before a job swept here, whose stored time has not moved, is swept again.
RETRY_AFTER = 2.0
#: Jobs read per sweep (the oldest first); more are taken by the next sweeps.
LIMIT = 5000


class Sweeper:
    """Takes the due times that the processes owning them did not claim."""

    def __init__(
        self,
        store: Store,
        cache: JobCache,
        submit: Callable[[Submission], None],
        can_fire: Callable[[], bool],
    ) -> None:
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
        if self.cache.share[1] <= 1 or not self.can_fire():
            return 0  # alone, every job is in its own share: nothing to read
        clock = time.monotonic()
        self._swept = {
            job_id: swept for job_id, swept in self._swept.items() if clock - swept[1] < RETRY_AFTER
        }
        now = time.time()
        before = now - LATE_AFTER
        funcs = self.cache.registry.refs()
        # Snapshots: the read below runs on a database thread.
        share, broken, swept = self.cache.share, set(self.cache.broken), dict(self._swept)

        def choose(overdue: list[tuple[str, float]]) -> list[str]:
            return [
                job_id
                for job_id, stored in overdue
                if wanted_here(job_id, stored, now, share, broken, swept.get(job_id))
            ]

        jobs = await self.store.overdue_jobs(before, funcs, LIMIT, choose)
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


def backup(job_id: str, share: Share) -> bool:
    """Whether this process is the first to take ``job_id``'s late times: of the live
    processes other than its owner, the one a second hash (Adler-32) of the id picks."""
    index, count = share
    data = job_id.encode()
    owner = zlib.crc32(data) % count if count > 1 else 0
    if index == owner:
        return False
    others = [i for i in range(count) if i != owner]
    return others[zlib.adler32(data) % len(others)] == index


def wanted_here(
    job_id: str,
    stored: float,
    now: float,
    share: Share,
    broken: set[str],
    swept: tuple[float, float] | None,
) -> bool:
    """Whether this process sweeps ``job_id``, overdue since ``stored`` (epoch seconds)
    at ``now``: not its own share, not broken here, first by its :func:`backup` (by any
    process once :data:`ANYONE_AFTER` late), and not swept here lately at that same
    stored time (``swept``: (stored time, monotonic time) of this process's last sweep)."""
    if owns(job_id, share) or job_id in broken:
        return False
    if now - stored < ANYONE_AFTER and not backup(job_id, share):
        return False
    return swept is None or abs(swept[0] - stored) > 1e-3
