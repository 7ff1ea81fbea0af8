"""The store as the engine, the service and the runtime see it: one interface, no SQL.

Every operation that reads or changes the database is one method of
:class:`Store`, and every change is one transaction that has committed
(or failed, changing nothing) when the method returns.  Methods take and
return plain values (:mod:`asyncapp.model`, the dataclasses here); where a
transaction needs a decision that belongs to the caller (whether a job's
function is registered, how a job changes), the caller passes a plain
function of model values, called inside the transaction.  Nothing above
``store/`` sees a connection or a statement, and nothing above it imports
SQLAlchemy (a contract in ``pyproject.toml``).

The one implementation is :class:`asyncapp.store.sql.SqlStore` (SQLite and
PostgreSQL); the shape follows APScheduler 4's ``abc.DataStore`` and
procrastinate's connector.  Every method may raise
:class:`~asyncapp.errors.DatabaseUnavailable`: the database is away, refuses
writes, or (``busy``) a lock wait timed out; nothing was applied.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from typing import Any, Protocol, TypedDict, TypeVar

from asyncapp.constants import JobFilter, JobSort, SchedulerState
from asyncapp.model.change import Actor, Change
from asyncapp.model.job import JobDef
from asyncapp.model.run import Run
from asyncapp.store.claims import Due, Outcome, Reasons
from asyncapp.store.processes import Process
from asyncapp.store.requests import Answer

__all__ = [
    "Answer",
    "Due",
    "Ends",
    "Heartbeat",
    "JobPage",
    "Outcome",
    "Overview",
    "Process",
    "ProcessRow",
    "Reaped",
    "Reasons",
    "Recorded",
    "RunPage",
    "Store",
]

T = TypeVar("T")


@dataclass(eq=False)
class Ends:
    """How runs ended, and failed attempts before a retry, to write in one transaction."""

    runs: list[Run] = field(default_factory=list)
    attempts: list[dict[str, Any]] = field(default_factory=list)
    #: Jobs whose waiting run (``buffer_one``) may start now that a run of theirs ended.
    buffered: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class Recorded:
    """What writing :class:`Ends` did."""

    #: The ends the history kept (another process may have ended some first).
    kept: list[Run] = field(default_factory=list)
    #: Waiting runs this process now owns and must start.
    started: list[Run] = field(default_factory=list)


class ProcessRow(TypedDict):
    """A process's heartbeat row as it writes it (the time is the database's clock)."""

    node: str
    host: str
    pid: int
    role: str
    version: str
    #: JSON: what the process says of itself (runs in progress, jobs...).
    info: str


@dataclass(frozen=True)
class Heartbeat:
    """A heartbeat written: the database's clock then, and the live processes."""

    clock: float
    live: list[Process]


@dataclass(frozen=True)
class Reaped:
    """What one reaping transaction did."""

    #: Runs of dead processes this process claimed again, to start.
    reruns: list[tuple[Run, JobDef]] = field(default_factory=list)
    #: Runs this process runs that the ledger says ended elsewhere.
    ended: list[str] = field(default_factory=list)
    #: The job function of each run ended for good here (for ``asyncapp_runs_total``).
    interrupted: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Overview:
    """The scheduler-wide state, the live processes by the database's clock, the jobs."""

    state: SchedulerState
    live: list[Process]
    clock: float
    jobs: list[JobDef] = field(default_factory=list)


@dataclass(frozen=True)
class JobPage:
    """One page of jobs, the total, each one's latest run and when it started failing."""

    jobs: list[JobDef]
    total: int
    last: dict[str, Run]
    failing_since: dict[str, datetime]


@dataclass(frozen=True)
class RunPage:
    """One page of runs, the total, and the earlier attempts of those retried."""

    runs: list[Run]
    total: int
    attempts: dict[str, list[dict[str, Any]]]


@dataclass(frozen=True, slots=True)
class Skipping:
    """How a change of a job records the due times it passes over unclaimed
    (:func:`asyncapp.store.claims.record_skipped`): the server's zone, this node, and
    the process timeout that says whether any firing process is alive."""

    zone: tzinfo
    node: str
    process_timeout: float


class Store(Protocol):
    """Every database operation of asyncapp (see the module docstring)."""

    @property
    def down_since(self) -> float | None:
        """Monotonic time the current outage began; None while the database answers."""
        ...

    @property
    def listens(self) -> bool:
        """Whether :meth:`listen` tells of changes (else they are polled)."""
        ...

    async def open(self, *, migrate: bool = True) -> None:
        """Connect, and bring the schema up to date unless not ``migrate``."""

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """One read round trip."""

    async def ping_write(self) -> None:
        """One write transaction (the database takes writes again)."""

    # -- runs: claims and ends --------------------------------------------------------

    async def claim(
        self, dues: list[Due], ends: Ends, *, node: str, process_id: str, reasons: Reasons
    ) -> tuple[Recorded, list[Outcome] | None]:
        """Write ``ends``, then claim ``dues`` for ``process_id``, in one transaction.

        The outcomes are None (nothing claimed) if ``process_id`` is presumed dead.
        """
        ...

    async def record_ends(self, ends: Ends, process_id: str) -> Recorded:
        """Write ``ends`` of runs ``process_id`` ran, in one transaction."""
        ...

    # -- processes --------------------------------------------------------------------

    async def register(self, process_id: str, row: ProcessRow) -> Heartbeat:
        """Add this process's heartbeat row (``row`` without its time), on the heartbeat
        thread and connection."""
        ...

    async def refresh(self, process_id: str, row: ProcessRow) -> Heartbeat | None:
        """Refresh this process's heartbeat row; None if it is gone (presumed dead)."""
        ...

    async def unregister(self, process_id: str) -> None:
        """Remove this process's row."""

    async def reap(
        self,
        process_id: str,
        *,
        node: str,
        running_here: list[str],
        judge: Callable[[], bool],
        process_timeout: float,
        stray_before: datetime,
        can_run: Callable[[JobDef], bool],
    ) -> Reaped:
        """Reconcile ``process_id``'s runs with the ledger and, if ``judge()`` (asked inside
        the transaction), end the runs of processes silent for ``process_timeout``."""
        ...

    # -- the change feed --------------------------------------------------------------

    async def last_change_id(self) -> int: ...

    async def changes_after(self, after: int) -> list[Change]: ...

    async def listen(self, signal: Callable[[], None]) -> None:
        """Call ``signal`` at each change another process commits, and on each
        (re)connection; runs until cancelled (only if :attr:`listens`)."""

    # -- reading jobs -----------------------------------------------------------------

    async def jobs(self) -> list[JobDef]:
        """Every job."""
        ...

    async def jobs_and_state(
        self, job_ids: list[str] | None = None
    ) -> tuple[dict[str, JobDef], SchedulerState]:
        """The jobs ``job_ids`` that exist (all, if None) and the scheduler-wide state."""
        ...

    async def map_jobs(self, fn: Callable[[JobDef], T]) -> list[T]:
        """``fn`` of every job, in :meth:`jobs`'s order, called as each is read."""
        ...

    async def job(self, job_id: str) -> JobDef | None: ...

    async def job_page(
        self,
        *,
        search: str | None,
        state: JobFilter | None,
        registered: list[str],
        limit: int,
        offset: int,
        sort: JobSort,
        descending: bool,
    ) -> JobPage: ...

    async def job_counts(self, registered: list[str]) -> dict[str, int]: ...

    async def overview(self, *, jobs: bool = False) -> Overview: ...

    async def scheduler_status(self) -> tuple[SchedulerState, Change | None]:
        """The scheduler-wide state and its latest change."""
        ...

    async def history(
        self, job_id: str | None, limit: int, offset: int
    ) -> tuple[list[Change], int]: ...

    async def run(self, run_id: str) -> Run | None: ...

    async def run_page(
        self,
        *,
        job_id: str | None,
        status: str | None,
        limit: int,
        offset: int,
        since: datetime | None,
        until: datetime | None,
        job_contains: str | None,
    ) -> RunPage: ...

    async def legacy_jobs(self) -> int:
        """Jobs in APScheduler's own ``apscheduler_jobs`` table, if there is one."""
        ...

    # -- changing jobs: each with its change rows, in one transaction -----------------

    async def add_job(
        self,
        job: JobDef,
        *,
        actor: Actor,
        detail: dict[str, Any],
        check: Callable[[int], None],
        key: tuple[str, str] | None = None,
        answer: Callable[[JobDef], Answer] | None = None,
    ) -> JobDef | Answer:
        """Insert ``job``; returns it as stored.

        With ``key`` (scope, key), an answer stored under it is returned instead
        and nothing is added; else ``answer(job)`` is stored under it.  ``check``
        gets the number of jobs before the insert and may raise.

        :raises JobExists:
        """
        ...

    async def change_job(
        self,
        job_id: str,
        *,
        action: str,
        actor: Actor,
        edit: Callable[[JobDef], tuple[JobDef, dict[str, Any]] | None],
        skipped: Skipping | None = None,
    ) -> JobDef:
        """Lock the job, ``edit`` it into (new job, change detail), store that; ``edit``
        returning None changes nothing.  Returns the job as stored.  With ``skipped``,
        the due times the change passes over unclaimed are recorded missed.

        :raises JobNotFound:
        """
        ...

    async def remove_job(self, job_id: str, actor: Actor) -> None:
        """:raises JobNotFound:"""

    async def save_jobs(
        self,
        jobs: list[JobDef],
        remove: list[str],
        *,
        actor: Actor,
        merge: Callable[[JobDef | None, JobDef], tuple[JobDef, dict[str, Any]] | None],
        skipped: Skipping | None = None,
    ) -> tuple[list[JobDef], list[str]]:
        """Upsert ``jobs`` (``merge(stored, job)`` says what to write, if anything) and
        remove ``remove``; returns (written, removed) as stored.  With ``skipped``, the
        due times a change passes over unclaimed are recorded missed."""
        ...

    async def set_scheduler_state(self, state: SchedulerState, actor: Actor) -> None: ...

    async def record_change(
        self, *, action: str, job_id: str | None, actor: Actor, detail: dict[str, Any]
    ) -> None: ...

    async def overdue_jobs(
        self,
        before: float,
        funcs: list[str],
        limit: int,
        choose: Callable[[list[tuple[str, float]]], list[str]],
    ) -> list[JobDef]:
        """The jobs ``choose`` picks among those due before ``before`` (epoch seconds,
        along the index on the stored next run time) whose function is one of ``funcs``:
        (id, stored next run time), oldest first, at most ``limit``; as stored now."""
        ...

    # -- housekeeping -----------------------------------------------------------------

    async def prune_answers(self, before: float) -> int: ...

    async def prune_changes(self, *, older_than: datetime, batch: int) -> int: ...

    async def prune_runs(
        self,
        *,
        older_than: datetime | None,
        keep_per_job: int,
        batch: int,
        job_ids: list[str] | None = None,
    ) -> int:
        """Delete up to ``batch`` ended runs past the history limits (``keep_per_job``
        applied to ``job_ids``; None: every job); how many went."""
        ...
