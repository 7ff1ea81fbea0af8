"""Jobs, their change history and the scheduler-wide state, in the database.

Every function here runs inside a transaction the caller opened on a
database thread (:meth:`asyncapp.store.database.Database.write` / ``read``); none touches
the loop or the in-memory cache.  A change is one transaction: the job row,
one row of ``asyncapp_changes`` saying who changed what, and (PostgreSQL) a
``NOTIFY`` that other processes receive once it commits.

``asyncapp_changes`` is both the history that people read and the feed that
processes follow to refresh their caches.  A feed read by "ids after the last
one seen" skips a change whose id was allocated before, but committed after,
one already seen; so on PostgreSQL change transactions take one advisory lock
and commit in id order (they are rare and short; claims, the hot path, never
take it).  SQLite has one writer at a time anyway.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import ColumnElement, case, delete, func, insert, select, text, update
from sqlalchemy.engine import Connection
from sqlalchemy.sql.selectable import ScalarSelect

from asyncapp.constants import (
    FAILING_STATUSES,
    MISSED,
    MISSED_REASONS,
    REMOVED,
    RUNNING,
    SCHEDULER,
    SCHEDULER_RUNNING,
    WAITING,
    JobFilter,
    JobSort,
    SchedulerState,
)
from asyncapp.model.change import Actor, Change
from asyncapp.model.job import JobDef
from asyncapp.model.values import as_utc, storable
from asyncapp.store.database import Database
from asyncapp.store.tables import changes_table, jobs_table, runs_table, scheduler_table

log = logging.getLogger("asyncapp.store")

CHANNEL = "asyncapp_changes"
#: Serialises change transactions on PostgreSQL (any agreed number; spells "asychng").
CHANGE_LOCK_KEY = 0x61737963686E67


class JobStore:
    """The database side of jobs; methods take the transaction's connection."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # -- reads -----------------------------------------------------------------------

    def get(self, conn: Connection, job_id: str, *, lock: bool = False) -> JobDef | None:
        """The stored job ``job_id``, or None; ``lock`` holds its row until commit."""
        query = select(jobs_table).where(jobs_table.c.id == job_id)
        if lock:
            query = query.with_for_update()
        row = conn.execute(query).first()
        return None if row is None else load(row)

    def all(self, conn: Connection) -> list[JobDef]:
        """Every stored job, soonest next run first, paused ones last."""
        rows = conn.execute(
            select(jobs_table).order_by(
                jobs_table.c.next_run_time.is_(None), jobs_table.c.next_run_time, jobs_table.c.id
            )
        )
        return [load(row) for row in rows]

    def each(self, conn: Connection) -> Iterator[JobDef]:
        """:meth:`all`, one job at a time."""
        rows = conn.execute(
            select(jobs_table).order_by(
                jobs_table.c.next_run_time.is_(None), jobs_table.c.next_run_time, jobs_table.c.id
            )
        )
        for row in rows:
            yield load(row)

    def page(
        self,
        conn: Connection,
        *,
        search: str | None,
        state: JobFilter | None,
        registered: list[str],
        limit: int,
        offset: int,
        sort: JobSort = "next",
        descending: bool = False,
    ) -> tuple[list[JobDef], int]:
        """One page of the jobs, filtered and ordered in SQL, and how many match in all.

        ``search`` is a case-insensitive part of the id; ``state`` keeps jobs
        that are scheduled, running (a run in progress), paused, failing (latest
        run ended in error or timeout) or broken (function not in ``registered``).
        A job whose stored definition cannot be read shows as broken but is
        filtered by its function.  ``sort``: ``next`` (:meth:`all`'s order),
        ``id``, ``last`` (latest scheduled time in the run ledger, newest first;
        never run last) or ``state`` (broken, failing, running, paused, scheduled);
        ``descending`` reverses it.  Every order ends with the id, so pages never
        overlap; ``last`` and ``state`` cost one step along the ledger's unique
        key (job, scheduled time) per job.
        """
        where: list[ColumnElement[bool]] = []
        if search:
            pattern = search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            where.append(jobs_table.c.id.ilike(f"%{pattern}%", escape="\\"))
        if state is not None:
            where.append(self._state_is(state, registered))
        total = conn.execute(select(func.count()).select_from(jobs_table).where(*where))
        rows = conn.execute(
            select(jobs_table)
            .where(*where)
            .order_by(*self._order(sort, descending, registered))
            .limit(limit)
            .offset(offset)
        )
        return [load(row) for row in rows], int(total.scalar_one())

    def counts(self, conn: Connection, registered: list[str]) -> dict[str, int]:
        """How many jobs each filter of :meth:`page` keeps, and ``all``."""
        columns = [
            func.count().label("all"),
            *(
                func.coalesce(
                    func.sum(case((self._state_is(name, registered), 1), else_=0)), 0
                ).label(name)
                for name in JOB_STATES
            ),
        ]
        row = conn.execute(select(*columns).select_from(jobs_table)).one()
        return {name: int(row._mapping[name]) for name in ("all", *JOB_STATES)}

    def _state_is(self, state: JobFilter, registered: list[str]) -> ColumnElement[bool]:
        if state == "scheduled":
            return jobs_table.c.next_run_time.is_not(None) & jobs_table.c.func.in_(registered)
        if state == "paused":
            return jobs_table.c.next_run_time.is_(None)
        if state == "broken":
            return jobs_table.c.func.not_in(registered)
        if state == "running":
            # Uncorrelated: read once through the status index, whatever the histories.
            running = select(runs_table.c.job_id).where(runs_table.c.status == RUNNING)
            return jobs_table.c.id.in_(running)
        return _latest_run(runs_table.c.status).in_(FAILING_STATUSES)

    def _order(
        self, sort: JobSort, descending: bool, registered: list[str]
    ) -> list[ColumnElement[Any]]:
        by_id = jobs_table.c.id.desc() if descending else jobs_table.c.id
        if sort == "id":
            return [by_id]
        if sort == "last":
            latest = _latest_run(runs_table.c.scheduled_for)
            return [latest.is_(None), latest if descending else latest.desc(), by_id]
        if sort == "state":
            rank = case(
                (jobs_table.c.func.not_in(registered), 0),
                (self._state_is("failing", registered), 1),
                (self._state_is("running", registered), 2),
                (jobs_table.c.next_run_time.is_(None), 3),
                else_=4,
            )
            first = rank.desc() if descending else rank
            return [first, jobs_table.c.next_run_time.is_(None), jobs_table.c.next_run_time, by_id]
        upcoming = jobs_table.c.next_run_time
        return [upcoming.is_(None), upcoming.desc() if descending else upcoming, by_id]

    def some(self, conn: Connection, job_ids: list[str]) -> dict[str, JobDef]:
        found: dict[str, JobDef] = {}
        for start in range(0, len(job_ids), 500):
            chunk = job_ids[start : start + 500]
            for row in conn.execute(select(jobs_table).where(jobs_table.c.id.in_(chunk))):
                found[row.id] = load(row)
        return found

    def overdue(
        self, conn: Connection, before: float, funcs: list[str], limit: int
    ) -> list[tuple[str, float]]:
        """(id, stored next run time) of the jobs due before ``before`` (UTC epoch
        seconds) whose function is one of ``funcs``, oldest first, at most ``limit``.

        A claim advances the stored time of the times it takes, so these are times
        no process claimed.  Paused jobs (NULL) never match; the range is read
        along the index on ``next_run_time`` and is empty while every process
        keeps up.
        """
        if not funcs:
            return []
        query = (
            select(jobs_table.c.id, jobs_table.c.next_run_time)
            .where(jobs_table.c.next_run_time < before, jobs_table.c.func.in_(funcs))
            .order_by(jobs_table.c.next_run_time)
            .limit(limit)
        )
        return [(row.id, row.next_run_time) for row in conn.execute(query)]

    def count(self, conn: Connection) -> int:
        return int(conn.execute(select(func.count()).select_from(jobs_table)).scalar_one())

    def scheduler_state(self, conn: Connection) -> SchedulerState:
        state = conn.execute(
            select(scheduler_table.c.state).where(scheduler_table.c.id == 1)
        ).scalar()
        return cast(SchedulerState, state or SCHEDULER_RUNNING)

    def prune_changes(self, conn: Connection, *, older_than: datetime, batch: int) -> int:
        """Delete up to ``batch`` changes recorded before ``older_than``, oldest first;
        returns how many went (call again until it is less than ``batch``)."""
        doomed = (
            select(changes_table.c.id)
            .where(changes_table.c.at < older_than)
            .order_by(changes_table.c.at)
            .limit(batch)
        )
        ids = list(conn.execute(doomed).scalars())
        if ids:
            conn.execute(delete(changes_table).where(changes_table.c.id.in_(ids)))
        return len(ids)

    def last_change_id(self, conn: Connection) -> int:
        return int(
            conn.execute(select(func.coalesce(func.max(changes_table.c.id), 0))).scalar_one()
        )

    def changes_after(self, conn: Connection, after: int) -> list[Change]:
        rows = conn.execute(
            select(changes_table).where(changes_table.c.id > after).order_by(changes_table.c.id)
        )
        return [_change(row) for row in rows]

    def history(
        self, conn: Connection, job_id: str | None, limit: int, offset: int
    ) -> tuple[list[Change], int]:
        """Changes of one job (or of all), newest first, and how many there are."""
        where = [] if job_id is None else [changes_table.c.job_id == job_id]
        total = conn.execute(select(func.count()).select_from(changes_table).where(*where))
        rows = conn.execute(
            select(changes_table)
            .where(*where)
            .order_by(changes_table.c.id.desc())
            .limit(limit)
            .offset(offset)
        )
        return [_change(row) for row in rows], int(total.scalar_one())

    # -- writes: call inside a write transaction, after begin_change -------------------

    def begin_change(self, conn: Connection) -> None:
        """Take the change lock (PostgreSQL): changes then commit in the order of their ids."""
        if self.db.is_postgres:
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": CHANGE_LOCK_KEY})

    def write(
        self,
        conn: Connection,
        job: JobDef,
        *,
        new: bool,
        action: str,
        actor: Actor,
        detail: dict[str, Any],
        now: float,
    ) -> JobDef:
        """Record the change, then store ``job`` (inserted if ``new``) under its new version.

        The version is the change's id (or the job's own, if higher): ids only grow,
        so a job's versions never go backwards, not even when it is removed and added
        again, and a process holding an older definition always takes the newer one.
        Returns the job as stored.
        """
        change_id = self.record(conn, action=action, job_id=job.id, actor=actor, detail=detail)
        stored = job.changed(version=max(change_id, job.version))
        if new:
            self.insert(conn, stored, now)
        else:
            self.replace(conn, stored, now)
        return stored

    def insert(self, conn: Connection, job: JobDef, now: float) -> None:
        conn.execute(insert(jobs_table).values(id=job.id, updated_at=now, **job.columns()))

    def replace(self, conn: Connection, job: JobDef, now: float) -> None:
        """Write ``job`` over its row (the caller holds the row lock and bumped the version)."""
        conn.execute(
            update(jobs_table)
            .where(jobs_table.c.id == job.id)
            .values(updated_at=now, **job.columns())
        )

    def delete(self, conn: Connection, job_id: str) -> bool:
        """Delete a job's row; a run of it waiting to start becomes a missed record."""
        conn.execute(
            update(runs_table)
            .where(runs_table.c.job_id == job_id, runs_table.c.status == WAITING)
            .values(
                status=MISSED,
                reason=REMOVED,
                ended_at=datetime.now(UTC),
                error_message=MISSED_REASONS[REMOVED],
            )
        )
        return bool(conn.execute(delete(jobs_table).where(jobs_table.c.id == job_id)).rowcount)

    def scheduler_change(self, conn: Connection) -> Change | None:
        """The latest change of the scheduler-wide state (who paused it, and when)."""
        row = conn.execute(
            select(changes_table)
            .where(changes_table.c.job_id.is_(None), changes_table.c.action == SCHEDULER)
            .order_by(changes_table.c.id.desc())
            .limit(1)
        ).first()
        return None if row is None else _change(row)

    def set_scheduler_state(self, conn: Connection, state: SchedulerState, now: float) -> str:
        """Store the scheduler-wide state; returns the one it replaces."""
        before = self.scheduler_state(conn)
        changed = conn.execute(
            update(scheduler_table)
            .where(scheduler_table.c.id == 1)
            .values(state=state, changed_at=now)
        )
        if not changed.rowcount:
            conn.execute(insert(scheduler_table).values(id=1, state=state, changed_at=now))
        return before

    def record(
        self,
        conn: Connection,
        *,
        action: str,
        job_id: str | None,
        actor: Actor,
        detail: dict[str, Any],
    ) -> int:
        """Add a change to the history and tell the other processes; returns its id."""
        change_id = conn.execute(
            insert(changes_table)
            .values(
                at=datetime.now(UTC),
                job_id=job_id,
                action=action if job_id is not None else SCHEDULER,
                source=actor.source,
                client=storable(actor.client, 200),
                detail=json.dumps(detail, sort_keys=True, default=str),
            )
            .returning(changes_table.c.id)
        ).scalar_one()
        if self.db.is_postgres:
            conn.execute(text("SELECT pg_notify(:channel, :payload)"), {
                "channel": CHANNEL, "payload": str(change_id),
            })  # fmt: skip
        return int(change_id)


#: The states a job is counted in (a job may be in several: failing and paused).
JOB_STATES: tuple[JobFilter, ...] = ("scheduled", "running", "paused", "failing", "broken")


def _latest_run(column: ColumnElement[Any]) -> ScalarSelect[Any]:
    """``column`` of the job's run with the latest scheduled time (one index step)."""
    return (
        select(column)
        .where(runs_table.c.job_id == jobs_table.c.id)
        .order_by(runs_table.c.scheduled_for.desc())
        .limit(1)
        .scalar_subquery()
    )


def load(row: Any) -> JobDef:
    """The job a row holds; a row whose data cannot be read becomes a job that cannot run."""
    try:
        return JobDef.from_row(row)
    except (ValueError, TypeError, KeyError) as exc:
        log.error("job %s: its stored definition cannot be read (%s)", row.id, exc)
        return JobDef(
            id=row.id,
            func=row.func,
            trigger={},
            damaged="its stored definition cannot be read",
            next_run_time=None,
            version=row.version,
        )


def _change(row: Any) -> Change:
    try:
        detail = json.loads(row.detail)
    except ValueError:
        detail = {}
    return Change(
        id=row.id,
        at=as_utc(row.at),
        job_id=row.job_id,
        action=row.action,
        source=row.source,
        client=row.client,
        detail=detail if isinstance(detail, dict) else {},
    )
