"""This process's cache of the jobs it can fire, sorted by next run time.

The scheduler reads the cache synchronously on the loop at every wakeup, so it
is memory; but it is only ever *fed* with rows the database committed (at
start, after this process's own changes, and from the change feed), never
written first.  Each entry keeps the row's ``version``: a claim made with a
version the database no longer has is refused, so a stale cache can delay a
run but never run something that was paused, removed or changed.

The sorted index is APScheduler 3's :class:`MemoryJobStore` (3.11), which only
reads ``.id`` and ``.next_run_time`` of what it holds; entries here are
:class:`Entry` objects instead of APScheduler ``Job`` s, because the scheduler
never calls a job's own methods (firing is :mod:`asyncapp.engine.dispatch`'s), and
building a ``Job`` validates every field again at each reload.

Jobs whose function is not registered in this process (or whose row cannot be
read) are kept out of the index and listed in :attr:`JobCache.broken`; they
stay in the database and are reported, never deleted.

Shares.  The index holds only this process's *share* of the jobs: those whose
id hashes to its rank among the live firing processes (:func:`owns`, crc32 of
the id modulo their count, the rank from the heartbeat table).  A job of
another share is known by its id only (:attr:`JobCache.others`): its trigger is
not built, and it costs the scheduler nothing at a wakeup.  Memory and
planning per process so follow its share; the definitions of other shares are
not kept, because the only code that fires them, the sweep
(:mod:`asyncapp.engine.sweep`), reads the few rows it takes from the database
anyway (their version must be the stored one for the claim to pass).  When
the live processes change, :meth:`JobCache.reshard` moves the jobs that leave
the share out of the index and returns those that join it: the caller re-reads
them before they are planned, because their stored ``next_run_time`` moved on
while another process fired them (the claim would drop the old times anyway,
so this saves work, not correctness).
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Any

from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.triggers.base import BaseTrigger

from asyncapp.errors import InvalidJob, UnknownFunction
from asyncapp.model.job import JobDef
from asyncapp.model.tasks import Registry
from asyncapp.model.triggers import build_trigger, canonical_time

log = logging.getLogger("asyncapp.cache")

#: (this process's index, live firing processes); ``(0, 1)``: every job is in the share.
Share = tuple[int, int]


def owns(job_id: str, share: Share) -> bool:
    """Whether ``job_id`` belongs to ``share``: each id to exactly one of ``count`` indexes."""
    index, count = share
    return count <= 1 or zlib.crc32(job_id.encode()) % count == index


@dataclass(slots=True, eq=False)
class Entry:
    """One schedulable job: its committed definition and this process's next time to fire."""

    id: str
    job: JobDef
    func: Callable[..., Any]
    trigger: BaseTrigger  # without jitter: claim keys are exact times
    next_run_time: datetime | None


class JobCache(MemoryJobStore):
    """Schedulable jobs by next run time; fed only with committed rows."""

    def __init__(self, registry: Registry, zone: tzinfo, share: Share = (0, 1)) -> None:
        super().__init__()
        self.registry = registry
        self.zone = zone
        self.share = share
        #: Stored jobs this process cannot run, by id, with the reason.
        self.broken: dict[str, str] = {}
        #: Schedulable jobs of other shares, by id only.
        self.others: set[str] = set()

    @property
    def known(self) -> int:
        """Schedulable jobs known to this process: its share and the others'."""
        return len(self.entries()) + len(self.others)

    def reshard(self, share: Share) -> list[str]:
        """Hold ``share`` from now on; returns the ids that joined it, to be re-read and
        :meth:`put` (until then they are not planned here)."""
        if share == self.share:
            return []
        self.share = share
        for entry in self.entries():
            if not owns(entry.id, share):
                self.remove_job(entry.id)
                self.others.add(entry.id)
        joined = sorted(job_id for job_id in self.others if owns(job_id, share))
        self.others.difference_update(joined)
        return joined

    def build(self, job: JobDef) -> Entry | None:
        """An entry for ``job`` outside the index (the sweep's); None if it cannot run here."""
        return self._entry(job)

    def entry(self, job_id: str) -> Entry | None:
        found: Entry | None = self.lookup_job(job_id)
        return found

    def entries(self) -> list[Entry]:
        found: list[Entry] = self.get_all_jobs()
        return found

    def load(self, jobs: Iterable[JobDef]) -> None:
        """Replace the whole cache (at start)."""
        self.remove_all_jobs()
        self.broken.clear()
        self.others.clear()
        for job in jobs:
            self.put(job)

    def put(self, job: JobDef) -> None:
        """Take the committed ``job``; older versions than the cached one are ignored."""
        current = self.entry(job.id)
        if current is not None and current.job.version > job.version:
            return
        entry = self._entry(job)
        if entry is None:
            if current is not None:
                self.remove_job(job.id)
            self.others.discard(job.id)
            return
        self.broken.pop(job.id, None)
        if not owns(job.id, self.share):
            self.others.add(job.id)
            return
        if current is None:
            self.add_job(entry)
            return
        if (
            current.job.version == job.version
            and current.next_run_time is not None
            and entry.next_run_time is not None
        ):
            # Fire state only moves forward: the database may lag the claims this
            # process has in flight, and times it already handed on must not repeat.
            entry.next_run_time = max(current.next_run_time, entry.next_run_time)
        # A newer version's stored time is the truth, even an earlier one than this
        # process planned up to: every claim made with an older version either
        # committed before the change (the stored time includes it) or is refused as
        # stale, so the times it handed on and did not account for are planned again,
        # with the new definition.
        self.update_job(entry)

    def drop(self, job_id: str) -> None:
        """Forget ``job_id`` (it was removed from the database)."""
        self.broken.pop(job_id, None)
        self.others.discard(job_id)
        if self.entry(job_id) is not None:
            self.remove_job(job_id)

    def advance(self, entry: Entry, next_run_time: datetime | None) -> None:
        """Move ``entry`` to its next time; None takes it out of the index."""
        entry.next_run_time = next_run_time
        if next_run_time is None:
            self.remove_job(entry.id)
        else:
            self.update_job(entry)

    def restore(self, job: JobDef, next_run_time: datetime) -> None:
        """Put back a time of ``job`` whose claim could not be made (the database was away);
        a job of another share is left to its owner (or the sweep)."""
        if not owns(job.id, self.share):
            return
        current = self.entry(job.id)
        if current is None:  # a finished one-shot job, taken out by advance()
            entry = self._entry(job)
            if entry is not None:
                entry.next_run_time = next_run_time
                self.add_job(entry)
            return
        if current.job.version == job.version and (
            current.next_run_time is None or current.next_run_time > next_run_time
        ):
            current.next_run_time = next_run_time
            self.update_job(current)

    def _entry(self, job: JobDef) -> Entry | None:
        if job.damaged is not None:
            self._broken(job.id, job.damaged)
            return None
        try:
            task = self.registry.resolve(job.func)
            trigger = build_trigger(job.trigger, self.zone, jitter=False)
        except (UnknownFunction, InvalidJob, KeyError, TypeError, ValueError) as exc:
            self._broken(job.id, str(exc))
            return None
        next_run_time = job.next_run_time
        if next_run_time is not None:
            next_run_time = canonical_time(trigger, next_run_time)
        return Entry(job.id, job, task.func, trigger, next_run_time)

    def _broken(self, job_id: str, reason: str) -> None:
        if job_id not in self.broken:
            log.error("job %s is broken and will not run: %s", job_id, reason)
        self.broken[job_id] = reason
