"""The claim: the one transaction that decides whether a scheduled time runs, here.

Every process that fires a job claims each of its scheduled times before the
job body may start.  One claim transaction takes a batch of due jobs
(everything that fell due in one scheduler wakeup, and whatever fell due
while the previous batch was being written), and for each:

- locks the job's row and checks the version the process fired from: a job
  paused, removed or changed since is not run (the process reloads it).  A
  row another transaction holds is skipped (``SKIP LOCKED``; the dispatcher
  tries it again shortly), so one held row delays its job, not the others;
  a "run now" waits for it, bounded by the database's lock timeout;
- checks the scheduler-wide state: paused or stopped means no claim;
- defers a time claimed ahead of its time (the claim lead) while the job's
  limit of runs is in progress: it is decided at its time;
- drops times the database already accounts for (before its ``next_run_time``):
  another process handled them;
- decides each remaining time: run it, or a missed record saying why
  (coalesced, too late, overlap), applying the job's overlap policy against
  the runs in progress in every process (see :func:`claim`);
- inserts all of it under the unique key (job id, scheduled time) with
  ``ON CONFLICT DO NOTHING``: of several processes, exactly one row wins
  for each time, and only a process whose *run* row was inserted runs it;
- advances the job's ``next_run_time`` (or deletes a finished one-shot job),
  only if the version is still the one checked.

So exactly-once rests on the unique key, not on timing or on any one process;
a process that was frozen and wakes up loses every claim another already won.

Locks are always taken in the same order, job rows (by id) before run rows,
by claims, by the ends of runs that may start a waiting run
(:func:`end_runs`), and by reaping (:func:`reap`), so they never deadlock.
Manual runs ("run now") are claimed the same way, at the current time, and
only check the job's limit of runs at once.
"""

from __future__ import annotations

import functools
import logging
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

from sqlalchemy import and_, bindparam, delete, func, insert, or_, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from asyncapp.constants import (
    ALLOW,
    BUFFER_ONE,
    CANCEL_OTHER,
    CHANGED,
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
    UNKNOWN,
    WAITING,
    OverlapPolicy,
)
from asyncapp.model.job import JobDef
from asyncapp.model.run import Run, new_id
from asyncapp.model.triggers import build_trigger, canonical_time, fire_time_after
from asyncapp.model.values import as_utc
from asyncapp.store.database import Database
from asyncapp.store.jobs import load
from asyncapp.store.processes import registered
from asyncapp.store.runs import get_run
from asyncapp.store.tables import attempts_table, jobs_table, processes_table, runs_table

log = logging.getLogger("asyncapp.cluster")

#: Times closer than this to the stored next run time count as that time
#: (the stored value is a float of epoch seconds).
EPSILON = timedelta(milliseconds=1)
CHUNK = 500


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
    overlap: OverlapPolicy = "skip"
    #: Scheduled times from ``folded[0]`` up to, not including, ``folded[1]``: too late
    #: to run and too many to record one by one; recorded as one missed record.
    folded: tuple[datetime, datetime] | None = None
    #: A "run now": claimed at ``times[0]`` whatever the schedule or pause says.
    manual: bool = False
    #: The id a manual run takes (derived from an ``Idempotency-Key``): if a run with it
    #: exists, the claim answers with that run instead of starting another.
    run_id: str | None = None
    #: Queued while a claim of the same job was being written, or late on purpose (a
    #: job another process prefers): its latest time runs even if a later one is due
    #: by now, so a job whose claims lag behind its interval still runs (once per
    #: claim) instead of coalescing every time into the next.
    final: bool = False
    #: Planned before its time (the claim lead): if the job's limit of runs is in
    #: progress, it is not decided now but claimed again at its time.
    ahead: bool = False


@dataclass(slots=True)
class Outcome:
    """What became of one :class:`Due`."""

    #: Runs this process won and must start.
    won: list[Run] = field(default_factory=list)
    #: Missed records this process wrote.
    missed: list[Run] = field(default_factory=list)
    #: A run that waits for the running one to end (overlap ``buffer_one``).
    waiting: list[Run] = field(default_factory=list)
    #: Runs in progress that this claim ended (overlap ``cancel_other``): their ids
    #: and the processes running them, which must cancel them.
    cancelled: list[tuple[str, str | None]] = field(default_factory=list)
    #: The job is gone, paused or changed: reload it before firing it again.
    stale: bool = False
    #: The scheduler-wide state is not running: nothing was claimed.
    halted: bool = False
    #: The run a manual claim with a ``run_id`` found already claimed (a retried request).
    replayed: Run | None = None
    #: A manual run was refused: the job's limit of runs at once is reached.
    busy: bool = False
    #: Another transaction holds the job's row: nothing was claimed; try again shortly.
    locked: bool = False
    #: Claimed ahead of its time (the claim lead) while the job's limit of runs was
    #: in progress: nothing was claimed; claim it again at its time.
    deferred: bool = False


class Reasons:
    """Why a time too late to run was missed: by what this process saw when.

    Only the latest :data:`WINDOWS_KEPT` outages and pauses are kept: a process
    that runs for months must not grow nor scan an unbounded list per missed
    time, and a time older than those windows is far past any misfire grace.
    """

    WINDOWS_KEPT = 100

    def __init__(self, started_at: datetime) -> None:
        self.started_at = started_at
        #: (from, to) windows in which this process could not reach the database.
        self.outages: deque[tuple[datetime, datetime]] = deque(maxlen=self.WINDOWS_KEPT)
        #: (from, to) windows in which this process saw the scheduler paused or stopped.
        self.pauses: deque[tuple[datetime, datetime]] = deque(maxlen=self.WINDOWS_KEPT)

    def late(self, scheduled_for: datetime) -> str:
        if scheduled_for < self.started_at:
            return NO_SCHEDULER
        if any(start <= scheduled_for <= end for start, end in reversed(self.outages)):
            return DATABASE_DOWN
        if any(start <= scheduled_for <= end for start, end in reversed(self.pauses)):
            return SCHEDULER_PAUSED
        return LATE


def limit(overlap: OverlapPolicy, max_instances: int) -> int:
    """How many runs of a job may be in progress at once under ``overlap``."""
    return max_instances if overlap == ALLOW else 1


def claim(
    db: Database,
    conn: Connection,
    batch: list[Due],
    *,
    node: str,
    process_id: str,
    reasons: Reasons,
) -> list[Outcome]:
    """Claim ``batch`` in the transaction of ``conn``; one :class:`Outcome` per item, in order.

    When a time is due while the job's limit of runs is in progress (in any
    process), its overlap policy decides: ``skip`` and ``allow`` record it
    missed (``overlap``); ``buffer_one`` claims it as ``waiting``, started when
    a running one ends (a second one waiting is missed); ``cancel_other`` ends
    the running ones as ``interrupted`` and runs it (their processes cancel them).
    """
    sql = statements(db.dialect)
    now = datetime.now(UTC)
    outcomes = [Outcome() for _ in batch]
    # "Run now" waits for a job row another transaction holds (at most the
    # database's lock timeout); a scheduled claim skips it and is tried again.
    manual = sorted({due.job_id for due in batch if due.manual})
    rows = _lock_jobs(conn, sql, manual)
    scheduled = sorted({due.job_id for due in batch} - set(manual))
    rows.update(_lock_jobs(conn, sql, scheduled, skip_locked=True))
    locked = _held_elsewhere(conn, [job_id for job_id in scheduled if job_id not in rows])
    # Counted after the lock, in statements of their own: on PostgreSQL (READ
    # COMMITTED) a count inside the locking statement reads the snapshot taken
    # before the lock wait, and misses the run the lock holder just claimed.
    running, waiting = _count_runs(conn, sql, list(rows))
    records: list[Run] = []
    advances: list[dict[str, Any]] = []
    finished: list[dict[str, Any]] = []

    def record(run: Run, outcome: Outcome) -> None:
        records.append(run)
        if run.status == RUNNING:
            outcome.won.append(run)
        elif run.status == WAITING:
            outcome.waiting.append(run)
        else:
            outcome.missed.append(run)

    for due, outcome in zip(batch, outcomes, strict=True):
        if due.job_id in locked:
            outcome.locked = True
            continue
        row = rows.get(due.job_id)
        if row is None or (row.version != due.version and not due.manual):
            outcome.stale = True
            continue
        cap = limit(due.overlap, row.max_instances)
        if due.manual:
            if due.run_id is not None:
                outcome.replayed = get_run(conn, due.run_id)
                if outcome.replayed is not None:
                    continue
            if running[due.job_id] >= cap:
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
        if due.ahead and due.times[-1] > now and running[due.job_id] >= cap:
            # Ahead of its time while a run is in progress: the run may end before
            # the time comes, so decide at the time, as without a lead.
            outcome.deferred = True
            continue
        accounted = datetime.fromtimestamp(row.next_run_time, UTC) - EPSILON
        if due.folded is not None and due.folded[1] > accounted:
            first = max(due.folded[0], accounted + EPSILON)
            record(_missed(due, first, now, node, reasons.late(first), due.folded[1]), outcome)
        times = [t for t in due.times if t >= accounted]
        # The times claimed together run one after another in one instance (as
        # APScheduler runs the times of one submission), so they count once.  With
        # coalesce only the latest due time runs: when a later one is due already
        # (this claim waited, a stall), these coalesce into it; it is planned and
        # queued behind this claim, and runs (``final``).
        later = due.next_run_time is not None and due.next_run_time <= now
        forward = due.coalesce and later and not due.final
        grace = due.misfire_grace_time
        runnable = {
            t
            for index, t in enumerate(times)
            if not (forward or (due.coalesce and index < len(times) - 1))
            and (grace is None or (now - t).total_seconds() <= grace)
        }
        if runnable and running[due.job_id] >= cap and due.overlap == CANCEL_OTHER:
            outcome.cancelled = _cancel_running(conn, due.job_id, now)
            running[due.job_id] -= len(outcome.cancelled)
        free = running[due.job_id] < cap
        for index, scheduled_for in enumerate(times):
            if scheduled_for in runnable and free:
                record(_run(due, scheduled_for, now, node, process_id), outcome)
                continue
            if scheduled_for in runnable and due.overlap == BUFFER_ONE and not waiting[due.job_id]:
                waiting[due.job_id] += 1
                record(_run(due, scheduled_for, now, node, process_id, WAITING), outcome)
                continue
            if scheduled_for in runnable and due.coalesce and later:
                # A later time of the job is due already: this one coalesces into it.
                reason = COALESCED
            elif scheduled_for in runnable:
                reason = OVERLAP
            elif grace is not None and (now - scheduled_for).total_seconds() > grace:
                # Too late to run whatever else ran: say why no one ran it in time.
                reason = reasons.late(scheduled_for)
            elif forward or (due.coalesce and index < len(times) - 1):
                reason = COALESCED
            else:
                reason = reasons.late(scheduled_for)
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
        outcome.waiting = [run for run in outcome.waiting if run.id in inserted]
    if advances:
        conn.execute(sql.advance, advances)
    if finished:
        conn.execute(sql.finish, finished)
    return outcomes


#: Skipped times recorded one by one by :func:`record_skipped` before the rest are folded.
SKIPPED_ONE_BY_ONE = 100


def record_skipped(
    conn: Connection,
    db: Database,
    before: JobDef,
    after: JobDef,
    *,
    zone: tzinfo,
    node: str,
    process_timeout: float,
) -> list[Run]:
    """Record as missed the due times of ``before`` that a change to ``after`` passes over
    unclaimed (call it in the change's transaction, with the job's row locked).

    A change that pauses a job or moves its next run time forward (a new trigger,
    a new declaration in code) would otherwise leave the times from the stored next
    run time up to now with no record: every process was down, or the change
    committed between a claim's planning and its transaction (the claim is then
    refused as stale).  The reason: ``no_scheduler`` if no firing process is alive,
    ``scheduler_paused`` if the scheduler-wide state is not running, else
    ``changed``.  Past :data:`SKIPPED_ONE_BY_ONE` times, the rest are one record
    (``missed_until``).  Returns the records written.
    """
    start = before.next_run_time
    if start is None or (after.next_run_time is not None and after.next_run_time <= start):
        return []
    now = datetime.now(UTC)
    if start > now or before.damaged is not None:
        return []
    trigger = build_trigger(before.trigger, zone, jitter=False)
    until = after.next_run_time
    moment = canonical_time(trigger, start)
    times: list[datetime] = []
    folded: tuple[datetime, datetime] | None = None
    while moment is not None and moment <= now and (until is None or moment < until):
        if len(times) == SKIPPED_ONE_BY_ONE:
            folded = (moment, now if until is None else min(now, until))
            break
        times.append(moment)
        moment = fire_time_after(trigger, moment, now)
    if not times:
        return []
    reason = _skipped_reason(conn, db.clock(conn) - process_timeout)
    due = Due(before.id, before.version, times, None)
    records = [_missed(due, t, now, node, reason) for t in times]
    if folded is not None:
        records.append(_missed(due, folded[0], now, node, reason, folded[1]))
    sql = statements(db.dialect)
    inserted = set(conn.execute(sql.insert, [run.row() for run in records]).scalars())
    return [run for run in records if run.id in inserted]


def _skipped_reason(conn: Connection, alive_since: float) -> str:
    live = conn.execute(
        select(func.count())
        .select_from(processes_table)
        .where(
            processes_table.c.role == "server",  # a firing process (engine.cluster.SERVER)
            processes_table.c.heartbeat_at >= alive_since,
        )
    ).scalar()
    if not live:
        return NO_SCHEDULER
    state = conn.execute(text("SELECT state FROM asyncapp_scheduler WHERE id = 1")).scalar()
    return CHANGED if state in (None, SCHEDULER_RUNNING) else SCHEDULER_PAUSED


def end_runs(
    conn: Connection,
    db: Database,
    ended: list[Run],
    process_id: str,
    *,
    buffered: Iterable[str] = (),
) -> tuple[int, list[Run]]:
    """Record the end of runs this process ran; start the waiting run of ``buffered`` jobs.

    Returns how many ends were recorded (a run another process ended or took
    over is left as it was, except that the real end replaces the ``unknown`` a
    reaper wrote when this process was presumed dead) and the waiting runs this
    process now owns and must start: for a job with overlap ``buffer_one``,
    the run that waited for the one that just ended.
    """
    sql = statements(db.dialect)
    buffered = sorted(set(buffered))
    if buffered:
        _lock_jobs(conn, sql, buffered)
    result = conn.execute(
        END_RUN,
        [
            {
                "b_id": run.id,
                "b_process": run.process_id or process_id,
                "status": run.status,
                "started_at": run.started_at,
                "ended_at": run.ended_at,
                "error_type": run.error_type,
                "error_message": run.error_message,
                "attempt": run.attempt,
                "reason": run.reason,
            }
            for run in ended
        ],
    )
    recorded = len(ended) if result.rowcount is None or result.rowcount < 0 else result.rowcount
    if buffered and not registered(conn, db, process_id):
        # Presumed dead: the reaper ended this process's runs and started what waited.
        return recorded, []
    return recorded, _promote(conn, buffered, process_id)


#: The function label of a run whose job is gone.
UNKNOWN_FUNC = "unknown"


def kept_ends(conn: Connection, ended: list[Run]) -> list[Run]:
    """Those of ``ended`` whose end the history holds (after :func:`end_runs`, in its
    transaction): the others had been ended by another process first."""
    rows = conn.execute(
        select(runs_table.c.id, runs_table.c.status, runs_table.c.ended_at).where(
            runs_table.c.id.in_([run.id for run in ended])
        )
    ).all()
    held = {row.id: (row.status, as_utc(row.ended_at)) for row in rows}
    return [run for run in ended if held.get(run.id) == (run.status, run.ended_at)]


def record_attempts(
    conn: Connection, db: Database, attempts: list[dict[str, Any]], process_id: str
) -> int:
    """Keep failed attempts of runs this process still runs; returns how many were kept.

    The run's row moves on to the next attempt with each kept one, so its
    ``attempt`` always follows the attempts kept (the reaper numbers from both).
    An attempt of a run another process ended or took over (this one was
    presumed dead) is not kept: that process numbers the attempts from then on.
    """
    keep = db.insert_ignoring_conflicts(attempts_table, "run_id", "attempt")
    kept = 0
    for row in attempts:
        moved = conn.execute(
            update(runs_table)
            .where(
                runs_table.c.id == row["run_id"],
                runs_table.c.process_id == (row["process_id"] or process_id),
                runs_table.c.status == RUNNING,
                runs_table.c.attempt <= row["attempt"],
            )
            .values(attempt=row["attempt"] + 1)
        )
        if moved.rowcount:
            conn.execute(keep.values(**row))
            kept += 1
    return kept


def reap(
    conn: Connection,
    db: Database,
    *,
    node: str,
    process_id: str,
    can_run: Callable[[JobDef], bool],
    ended: list[str] | None = None,
) -> list[tuple[Run, JobDef]]:
    """End the runs of processes that are gone; returns those this process starts.

    ``ended`` receives the job function of each run ended here for good (not
    run again), for ``asyncapp_runs_total`` once the transaction commits.

    A run is orphaned when the process that claimed it has no row in
    ``asyncapp_processes`` any more (it stopped heartbeating and was removed).
    Each becomes ``unknown``, not ``interrupted``: all the reaper knows is that the
    end was never recorded, and a run that finished while its end waited in the
    dead process's queue (the database was away, or the process was killed within
    the few milliseconds before the write) looks the same as one cut short.  If
    its job asks for it (``rerun_interrupted``)
    and ``can_run`` says this process can run it, the run is claimed again by
    this process as its next attempt (the interrupted attempt is kept in
    ``asyncapp_attempts``).  A run that waited for an orphan (``buffer_one``)
    is started by this process too.  Each orphan is ended by one process only:
    the update is conditional on the run still being in progress.

    The interrupted attempt is numbered after the attempts already kept (a dead
    process may have kept a failed attempt and died in the retry's backoff), and
    each orphan is reaped under its own savepoint: one that fails is logged and
    left, and cannot roll back the others or the caller's transaction.
    """
    live = select(processes_table.c.id)
    orphans = conn.execute(
        select(runs_table.c.id, runs_table.c.job_id).where(
            runs_table.c.status.in_((RUNNING, WAITING)),
            or_(runs_table.c.process_id.is_(None), runs_table.c.process_id.not_in(live)),
        )
    ).all()
    if not orphans:
        return []
    sql = statements(db.dialect)
    job_ids = sorted({row.job_id for row in orphans})
    _lock_jobs(conn, sql, job_ids)
    jobs = {
        row.id: load(row)
        for row in conn.execute(select(jobs_table).where(jobs_table.c.id.in_(job_ids)))
    }
    now = datetime.now(UTC)
    starts: list[tuple[Run, JobDef]] = []
    for orphan in conn.execute(
        select(runs_table).where(
            runs_table.c.id.in_([row.id for row in orphans]),
            runs_table.c.status.in_((RUNNING, WAITING)),
            or_(runs_table.c.process_id.is_(None), runs_table.c.process_id.not_in(live)),
        )
    ).all():
        if orphan.status == WAITING:
            continue  # started below, once the runs it waits for are ended
        # One savepoint per orphan: a row that cannot be reaped is logged and left,
        # and the others (and the caller's transaction) go on.
        try:
            with conn.begin_nested():
                again = _reap_one(
                    conn, orphan, jobs.get(orphan.job_id), now, node, process_id, can_run
                )
        except Exception:
            log.exception(
                "reaping run %s of job %s failed; it is left as it is", orphan.id, orphan.job_id
            )
            continue
        if again is not None:
            starts.append(again)
        elif ended is not None:
            job = jobs.get(orphan.job_id)
            ended.append(job.func if job is not None else UNKNOWN_FUNC)
    mine = [job_id for job_id in job_ids if job_id in jobs and can_run(jobs[job_id])]
    starts.extend((run, jobs[run.job_id]) for run in _promote(conn, mine, process_id, node))
    return starts


def interrupt_strays(
    conn: Connection, process_id: str, running_here: Iterable[str], claimed_before: datetime
) -> list[str]:
    """End as interrupted the runs ``process_id`` claimed before ``claimed_before`` that
    it does not run (not in ``running_here``); returns their ids.

    Such a run never started, or its start was lost: a claim whose commit was
    reported as failed although it succeeded.  Left ``running``, it would count
    against the job's ``max_instances`` until this process exits.
    """
    here = set(running_here)
    strays = [
        run_id
        for run_id in conn.execute(
            select(runs_table.c.id).where(
                runs_table.c.process_id == process_id,
                runs_table.c.status == RUNNING,
                runs_table.c.started_at < claimed_before,
            )
        ).scalars()
        if run_id not in here
    ]
    if strays:
        conn.execute(
            update(runs_table)
            .where(runs_table.c.id.in_(strays), runs_table.c.status == RUNNING)
            .values(
                status=INTERRUPTED,
                ended_at=datetime.now(UTC),
                error_message="its process was not running it (its start was lost)",
            )
        )
    return strays


def _reap_one(
    conn: Connection,
    orphan: Any,
    job: JobDef | None,
    now: datetime,
    node: str,
    process_id: str,
    can_run: Callable[[JobDef], bool],
) -> tuple[Run, JobDef] | None:
    """End one orphaned run as unknown; claim it again as ``process_id`` if its job asks."""
    # The interrupted attempt is numbered after every attempt already kept: the dead
    # process may have recorded a failed attempt (a retry in backoff) that its run
    # row does not show yet.
    kept = conn.execute(
        select(func.max(attempts_table.c.attempt)).where(attempts_table.c.run_id == orphan.id)
    ).scalar()
    attempt = max(orphan.attempt, (kept or 0) + 1)
    ended = {
        "status": UNKNOWN,
        "ended_at": now,
        "error_type": None,
        "error_message": f"process {orphan.node} stopped responding before recording how "
        "the run ended (it may have finished)",
    }
    if job is None or not job.rerun_interrupted or not can_run(job):
        conn.execute(
            update(runs_table).where(runs_table.c.id == orphan.id).values(attempt=attempt, **ended)
        )
        return None
    conn.execute(
        insert(attempts_table).values(
            run_id=orphan.id,
            attempt=attempt,
            started_at=orphan.started_at,
            node=orphan.node,
            process_id=orphan.process_id,
            **ended,
        )
    )
    again = Run(
        id=orphan.id,
        job_id=orphan.job_id,
        scheduled_for=as_utc(orphan.scheduled_for),
        node=node,
        process_id=process_id,
        started_at=now,
        attempt=attempt + 1,
    )
    conn.execute(
        update(runs_table)
        .where(runs_table.c.id == orphan.id)
        .values(
            node=node,
            process_id=process_id,
            started_at=now,
            attempt=again.attempt,
            error_type=None,
            error_message=None,
        )
    )
    return again, job


def _lock_jobs(
    conn: Connection, sql: Statements, ids: list[str], *, skip_locked: bool = False
) -> dict[str, Any]:
    """Lock and read the rows of ``ids`` (in id order); ``skip_locked``: leave out rows
    another transaction holds rather than wait for them (PostgreSQL)."""
    rows: dict[str, Any] = {}
    statement = sql.lock_skip if skip_locked else sql.lock
    for start in range(0, len(ids), CHUNK):
        for found in conn.execute(statement, {"ids": ids[start : start + CHUNK]}):
            rows[found.id] = found
    return rows


def _held_elsewhere(conn: Connection, ids: list[str]) -> set[str]:
    """Of ``ids``, left out by a ``skip_locked`` lock, those that exist: locked, not gone."""
    if not ids:
        return set()
    return set(conn.execute(select(jobs_table.c.id).where(jobs_table.c.id.in_(ids))).scalars())


def _count_runs(
    conn: Connection, sql: Statements, ids: list[str]
) -> tuple[dict[str, int], dict[str, int]]:
    """(running, waiting) runs of each of ``ids``, read now (call it after locking them)."""
    running = dict.fromkeys(ids, 0)
    waiting = dict.fromkeys(ids, 0)
    for start in range(0, len(ids), CHUNK):
        for found in conn.execute(sql.count, {"ids": ids[start : start + CHUNK]}):
            running[found.job_id] = found.running
            waiting[found.job_id] = found.waiting
    return running, waiting


def _cancel_running(conn: Connection, job_id: str, now: datetime) -> list[tuple[str, str | None]]:
    """End ``job_id``'s runs in progress as interrupted; returns (run id, process id) of each."""
    victims = conn.execute(
        select(runs_table.c.id, runs_table.c.process_id).where(
            runs_table.c.job_id == job_id, runs_table.c.status == RUNNING
        )
    ).all()
    if victims:
        conn.execute(
            update(runs_table)
            .where(runs_table.c.id.in_([v.id for v in victims]), runs_table.c.status == RUNNING)
            .values(
                status=INTERRUPTED,
                ended_at=now,
                error_message="cancelled: a newer run started (overlap policy cancel_other)",
            )
        )
    return [(v.id, v.process_id) for v in victims]


def _promote(
    conn: Connection, job_ids: list[str], process_id: str, node: str | None = None
) -> list[Run]:
    """Start, as ``process_id``, the waiting run of each job that has none in progress."""
    if not job_ids:
        return []
    busy = set(
        conn.execute(
            select(runs_table.c.job_id).where(
                runs_table.c.job_id.in_(job_ids), runs_table.c.status == RUNNING
            )
        ).scalars()
    )
    candidates = conn.execute(
        select(runs_table)
        .where(
            runs_table.c.job_id.in_([j for j in job_ids if j not in busy]),
            runs_table.c.status == WAITING,
        )
        .order_by(runs_table.c.scheduled_for)
    ).all()
    now = datetime.now(UTC)
    started: list[Run] = []
    for row in candidates:
        if row.job_id in busy:
            continue
        busy.add(row.job_id)
        values: dict[str, Any] = {"status": RUNNING, "process_id": process_id, "started_at": now}
        if node is not None:
            values["node"] = node
        conn.execute(update(runs_table).where(runs_table.c.id == row.id).values(**values))
        started.append(
            Run(
                id=row.id,
                job_id=row.job_id,
                scheduled_for=as_utc(row.scheduled_for),
                node=node or row.node,
                process_id=process_id,
                started_at=now,
                attempt=row.attempt,
            )
        )
    return started


def _run(
    due: Due,
    scheduled_for: datetime,
    now: datetime,
    node: str,
    process_id: str,
    status: str = RUNNING,
) -> Run:
    return Run(
        id=due.run_id or new_id(),
        job_id=due.job_id,
        scheduled_for=scheduled_for,
        node=node,
        process_id=process_id,
        # A run claimed ahead of its time (the claim lead) starts at that time.
        started_at=max(now, scheduled_for) if status == RUNNING else None,
        status=status,  # type: ignore[arg-type]
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


@dataclass(frozen=True)
class Statements:
    """The claim's statements, built once per dialect.

    Building SQLAlchemy expressions and their cache keys at every claim cost
    more than the database work itself (2.5 ms of Python for a one-job claim
    on SQLite, on the database thread, holding the GIL the loop needs).  The
    job rows and the scheduler-wide state come in one statement; on PostgreSQL
    it locks the job rows (``FOR UPDATE OF j``, in id order; ``SKIP LOCKED``
    for scheduled claims, so one held row delays its job only) and shares the
    scheduler row (``FOR SHARE OF s``: a scheduler pause waits for claims in
    flight, and claims after it see it).  Their runs in progress or waiting are
    counted by a second statement, after the lock (DESIGN.md fact 17).
    """

    lock: Any
    lock_skip: Any
    count: Any
    insert: Any
    advance: Any
    finish: Any


LOCK_JOBS = (
    "SELECT j.id, j.version, j.next_run_time, j.max_instances, s.state "
    "FROM asyncapp_jobs j, asyncapp_scheduler s "
    "WHERE s.id = 1 AND j.id IN :ids ORDER BY j.id"
)
COUNT_RUNS = (
    "SELECT job_id, "
    "sum(CASE WHEN status = 'running' THEN 1 ELSE 0 END) AS running, "
    "sum(CASE WHEN status = 'waiting' THEN 1 ELSE 0 END) AS waiting "
    "FROM asyncapp_runs WHERE job_id IN :ids AND status IN ('running', 'waiting') "
    "GROUP BY job_id"
)
POSTGRES_LOCKS = " FOR UPDATE OF j FOR SHARE OF s"
POSTGRES_SKIP_LOCKED = " FOR UPDATE OF j SKIP LOCKED FOR SHARE OF s"

#: Ends a run this process claimed, unless another process ended it meanwhile.
END_RUN = (
    update(runs_table)
    .where(
        and_(
            runs_table.c.id == bindparam("b_id"),
            runs_table.c.process_id == bindparam("b_process"),
            # A reaper's "unknown" gives way to the real end, come late from a
            # process that was presumed dead (a run taken over again is RUNNING
            # under another process id: not matched).
            or_(runs_table.c.status == RUNNING, runs_table.c.status == UNKNOWN),
        )
    )
    .values(
        status=bindparam("status"),
        started_at=bindparam("started_at"),
        ended_at=bindparam("ended_at"),
        error_type=bindparam("error_type"),
        error_message=bindparam("error_message"),
        attempt=bindparam("attempt"),
        reason=bindparam("reason"),
    )
)


@functools.cache
def statements(dialect: str) -> Statements:
    postgres = dialect == "postgresql"
    lock = text(LOCK_JOBS + POSTGRES_LOCKS if postgres else LOCK_JOBS)
    lock = lock.bindparams(bindparam("ids", expanding=True))
    lock_skip = text(LOCK_JOBS + POSTGRES_SKIP_LOCKED if postgres else LOCK_JOBS)
    lock_skip = lock_skip.bindparams(bindparam("ids", expanding=True))
    count = text(COUNT_RUNS).bindparams(bindparam("ids", expanding=True))
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
    return Statements(lock, lock_skip, count, insert_runs, advance, finish)
