"""The claim: the one transaction that decides whether a scheduled time runs, here.

Every process that fires a job claims each of its scheduled times before the
job body may start.  One claim transaction takes a batch of due jobs
(everything that fell due in one scheduler wakeup, and whatever fell due
while the previous batch was being written), and for each:

- locks the job's row and checks the version the process fired from: a job
  paused, removed or changed since is not run (the process reloads it);
- checks the scheduler-wide state: paused or stopped means no claim;
- drops times the database already accounts for (before its ``next_run_time``):
  another process handled them;
- decides each remaining time: run it, or a missed record saying why
  (coalesced, too late, overlap with a run still in progress cluster-wide);
- inserts all of it under the unique key (job id, scheduled time) with
  ``ON CONFLICT DO NOTHING``: of several processes, exactly one row wins
  for each time, and only a process whose *run* row was inserted runs it;
- advances the job's ``next_run_time`` (or deletes a finished one-shot job),
  only if the version is still the one checked.

So exactly-once rests on the unique key, not on timing or on any one process;
a process that was frozen and wakes up loses every claim another already won.
Rows are locked in id order, so two processes claiming overlapping batches
never deadlock.  Manual runs ("run now") are claimed the same way, at the
current time, and only check ``max_instances``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, delete, insert, or_, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from .constants import (
    COALESCED,
    DATABASE_DOWN,
    INTERRUPTED,
    LATE,
    MISSED,
    MISSED_REASONS,
    NO_SCHEDULER,
    OVERLAP,
    RUNNING,
    SCHEDULER_PAUSED,
    SCHEDULER_RUNNING,
)
from .db import Database, as_utc
from .jobs import JobDef
from .ledger import Run, new_id
from .schema import attempts_table, jobs_table, processes_table, runs_table
from .store import load

#: Times closer than this to the stored next run time count as that time
#: (the stored value is a float of epoch seconds).
EPSILON = timedelta(milliseconds=1)


@dataclass(slots=True)
class Due:
    """What one process wants to claim for one job."""

    job_id: str
    version: int
    #: Due scheduled times, oldest first.
    times: list[datetime]
    #: The job's next scheduled time after ``times``; None when its schedule is over.
    next_run_time: datetime | None
    coalesce: bool = True
    misfire_grace_time: float | None = None
    #: Scheduled times from ``folded[0]`` up to, not including, ``folded[1]``: too late
    #: to run and too many to record one by one; recorded as one missed record.
    folded: tuple[datetime, datetime] | None = None
    #: A "run now": claimed at ``times[0]`` whatever the schedule or pause says.
    manual: bool = False


@dataclass(slots=True)
class Outcome:
    """What became of one :class:`Due`."""

    #: Runs this process won and must start.
    won: list[Run] = field(default_factory=list)
    #: Missed records this process wrote.
    missed: list[Run] = field(default_factory=list)
    #: The job is gone, paused or changed: reload it before firing it again.
    stale: bool = False
    #: The scheduler-wide state is not running: nothing was claimed.
    halted: bool = False
    #: A manual run was refused: ``max_instances`` runs are in progress.
    busy: bool = False


class Reasons:
    """Why a time too late to run was missed: by what this process saw when."""

    def __init__(self, started_at: datetime) -> None:
        self.started_at = started_at
        #: (from, to) windows in which this process could not reach the database.
        self.outages: list[tuple[datetime, datetime]] = []
        #: (from, to) windows in which this process saw the scheduler paused or stopped.
        self.pauses: list[tuple[datetime, datetime]] = []

    def late(self, scheduled_for: datetime) -> str:
        if scheduled_for < self.started_at:
            return NO_SCHEDULER
        if any(start <= scheduled_for <= end for start, end in self.outages):
            return DATABASE_DOWN
        if any(start <= scheduled_for <= end for start, end in self.pauses):
            return SCHEDULER_PAUSED
        return LATE


def claim(
    db: Database,
    conn: Connection,
    batch: list[Due],
    *,
    node: str,
    process_id: str,
    reasons: Reasons,
) -> list[Outcome]:
    """Claim ``batch`` in the transaction of ``conn``; one :class:`Outcome` per item, in order."""
    sql = statements(db.dialect)
    now = datetime.now(UTC)
    outcomes = [Outcome() for _ in batch]
    ids = sorted({due.job_id for due in batch})
    rows: dict[str, Any] = {}
    for start in range(0, len(ids), CHUNK):
        for found in conn.execute(sql.lock, {"ids": ids[start : start + CHUNK]}):
            rows[found.id] = found
    running = {job_id: row.running for job_id, row in rows.items()}
    records: list[Run] = []
    advances: list[dict[str, Any]] = []
    finished: list[dict[str, Any]] = []

    def record(run: Run, outcome: Outcome) -> None:
        records.append(run)
        (outcome.won if run.status == RUNNING else outcome.missed).append(run)

    for due, outcome in zip(batch, outcomes, strict=True):
        row = rows.get(due.job_id)
        if row is None or (row.version != due.version and not due.manual):
            outcome.stale = True
            continue
        if due.manual:
            if running[due.job_id] >= row.max_instances:
                outcome.busy = True
            else:
                running[due.job_id] += 1
                record(_run(due, due.times[0], now, node, process_id), outcome)
            continue
        if row.next_run_time is None:
            outcome.stale = True
            continue
        if row.state != SCHEDULER_RUNNING:
            outcome.halted = True
            continue
        accounted = datetime.fromtimestamp(row.next_run_time, UTC) - EPSILON
        if due.folded is not None and due.folded[1] > accounted:
            first = max(due.folded[0], accounted + EPSILON)
            record(_missed(due, first, now, node, reasons.late(first), due.folded[1]), outcome)
        times = [t for t in due.times if t >= accounted]
        # The times claimed together run one after another in one instance (as
        # APScheduler runs the times of one submission), so they count once.
        free = running[due.job_id] < row.max_instances
        for index, scheduled_for in enumerate(times):
            late = (now - scheduled_for).total_seconds()
            if due.coalesce and index < len(times) - 1:
                reason = COALESCED
            elif due.misfire_grace_time is not None and late > due.misfire_grace_time:
                reason = reasons.late(scheduled_for)
            elif not free:
                reason = OVERLAP
            else:
                record(_run(due, scheduled_for, now, node, process_id), outcome)
                continue
            record(_missed(due, scheduled_for, now, node, reason), outcome)
        if outcome.won:
            running[due.job_id] += 1
        if due.next_run_time is None:
            finished.append({"b_job": due.job_id, "b_version": due.version})
        elif due.next_run_time.timestamp() > row.next_run_time:
            advances.append(
                {
                    "b_job": due.job_id,
                    "b_version": due.version,
                    "b_next": due.next_run_time.timestamp(),
                }
            )

    inserted: set[str] = set()
    for start in range(0, len(records), CHUNK):
        chunk = [run.row() for run in records[start : start + CHUNK]]
        inserted.update(conn.execute(sql.insert, chunk).scalars())
    for outcome in outcomes:
        outcome.won = [run for run in outcome.won if run.id in inserted]
        outcome.missed = [run for run in outcome.missed if run.id in inserted]
    if advances:
        conn.execute(sql.advance, advances)
    if finished:
        conn.execute(sql.finish, finished)
    return outcomes


CHUNK = 500


@dataclass(frozen=True)
class Statements:
    """The claim's statements, built once per dialect.

    Building SQLAlchemy expressions and their cache keys at every claim cost
    more than the database work itself (2.5 ms of Python for a one-job claim
    on SQLite, on the database thread, holding the GIL the loop needs).  The
    job rows, their runs in progress and the scheduler-wide state come in one
    statement; on PostgreSQL it locks the job rows (``FOR UPDATE OF j``, in id
    order) and shares the scheduler row (``FOR SHARE OF s``: a scheduler pause
    waits for claims in flight, and claims after it see it).
    """

    lock: Any
    insert: Any
    advance: Any
    finish: Any


LOCK_JOBS = (
    "SELECT j.id, j.version, j.next_run_time, j.max_instances, s.state, "
    "(SELECT count(*) FROM asyncapp_runs r "
    "WHERE r.job_id = j.id AND r.status = 'running') AS running "
    "FROM asyncapp_jobs j, asyncapp_scheduler s "
    "WHERE s.id = 1 AND j.id IN :ids ORDER BY j.id"
)
POSTGRES_LOCKS = " FOR UPDATE OF j FOR SHARE OF s"


@functools.cache
def statements(dialect: str) -> Statements:
    lock_sql = LOCK_JOBS + POSTGRES_LOCKS if dialect == "postgresql" else LOCK_JOBS
    lock = text(lock_sql).bindparams(bindparam("ids", expanding=True))
    dialect_insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    insert_runs = (
        dialect_insert(runs_table)
        .on_conflict_do_nothing(index_elements=["job_id", "scheduled_for"])
        .returning(runs_table.c.id)
    )
    advance = (
        update(jobs_table)
        .where(
            jobs_table.c.id == bindparam("b_job"),
            jobs_table.c.version == bindparam("b_version"),
            jobs_table.c.next_run_time < bindparam("b_next"),
        )
        .values(next_run_time=bindparam("b_next"))
    )
    finish = delete(jobs_table).where(
        jobs_table.c.id == bindparam("b_job"), jobs_table.c.version == bindparam("b_version")
    )
    return Statements(lock, insert_runs, advance, finish)


def _run(due: Due, scheduled_for: datetime, now: datetime, node: str, process_id: str) -> Run:
    return Run(
        id=new_id(),
        job_id=due.job_id,
        scheduled_for=scheduled_for,
        node=node,
        process_id=process_id,
        started_at=now,
    )


def _missed(
    due: Due,
    scheduled_for: datetime,
    now: datetime,
    node: str,
    reason: str,
    until: datetime | None = None,
) -> Run:
    return Run(
        id=new_id(),
        job_id=due.job_id,
        scheduled_for=scheduled_for,
        node=node,
        status=MISSED,
        ended_at=now,
        reason=reason,
        error_message=MISSED_REASONS[reason],
        missed_until=until,
    )


def reap(
    conn: Connection, *, node: str, process_id: str, can_run: Callable[[JobDef], bool]
) -> list[tuple[Run, JobDef]]:
    """End the runs of processes that are gone; returns those this process re-runs.

    A run is orphaned when the process that claimed it has no row in
    ``asyncapp_processes`` any more (it stopped heartbeating and was removed).
    Each becomes ``interrupted``; if its job asks for it (``rerun_interrupted``)
    and ``can_run`` says this process can run it, the run is claimed again by
    this process as its next attempt (the interrupted attempt is kept in
    ``asyncapp_attempts``).  Rows are taken with ``SKIP LOCKED``: when several
    processes reap at once, each orphan is handled by one of them.
    """
    live = select(processes_table.c.id)
    orphans = conn.execute(
        select(runs_table)
        .where(
            runs_table.c.status == RUNNING,
            or_(runs_table.c.process_id.is_(None), runs_table.c.process_id.not_in(live)),
        )
        .with_for_update(skip_locked=True)
    ).all()
    if not orphans:
        return []
    now = datetime.now(UTC)
    jobs = {
        row.id: load(row)
        for row in conn.execute(
            select(jobs_table).where(jobs_table.c.id.in_({row.job_id for row in orphans}))
        )
    }
    reruns: list[tuple[Run, JobDef]] = []
    for row in orphans:
        ended = {
            "status": INTERRUPTED,
            "ended_at": now,
            "error_type": None,
            "error_message": f"process {row.node} stopped responding while it ran",
        }
        job = jobs.get(row.job_id)
        if job is None or not job.rerun_interrupted or not can_run(job):
            conn.execute(update(runs_table).where(runs_table.c.id == row.id).values(**ended))
            continue
        conn.execute(
            insert(attempts_table).values(
                run_id=row.id,
                attempt=row.attempt,
                started_at=row.started_at,
                node=row.node,
                process_id=row.process_id,
                **ended,
            )
        )
        again = Run(
            id=row.id,
            job_id=row.job_id,
            scheduled_for=as_utc(row.scheduled_for),  # type: ignore[arg-type]
            node=node,
            process_id=process_id,
            started_at=now,
            attempt=row.attempt + 1,
        )
        conn.execute(
            update(runs_table)
            .where(runs_table.c.id == row.id)
            .values(
                node=node,
                process_id=process_id,
                started_at=now,
                attempt=again.attempt,
                error_type=None,
                error_message=None,
            )
        )
        reruns.append((again, job))
    return reruns
