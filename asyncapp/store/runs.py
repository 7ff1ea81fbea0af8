"""The run ledger: one row per claimed scheduled time, as a run or a missed record.

:class:`Run` is a row of ``asyncapp_runs``; the queries here read them back
with their earlier attempts.  Rows are written by claims
(:mod:`asyncapp.store.claims`) and ended by the recorder (:mod:`asyncapp.engine.recorder`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.engine import Connection

from asyncapp.constants import FAILING_STATUSES, SUCCESS
from asyncapp.model.run import Run
from asyncapp.model.values import as_utc
from asyncapp.store.tables import attempts_table, jobs_table, runs_table

log = logging.getLogger("asyncapp.run")


def run_from_row(row: Any) -> Run:
    return Run(
        id=row.id,
        job_id=row.job_id,
        scheduled_for=as_utc(row.scheduled_for),
        started_at=as_utc(row.started_at),
        ended_at=as_utc(row.ended_at),
        status=row.status,
        error_type=row.error_type,
        error_message=row.error_message,
        node=row.node,
        attempt=row.attempt,
        process_id=row.process_id,
        reason=row.reason,
        missed_until=as_utc(row.missed_until),
    )


def get_run(conn: Connection, run_id: str) -> Run | None:
    """The run or missed record ``run_id``, or None."""
    row = conn.execute(select(runs_table).where(runs_table.c.id == run_id)).first()
    return None if row is None else run_from_row(row)


def select_runs(
    conn: Connection,
    *,
    job_id: str | None,
    status: str | None,
    limit: int,
    offset: int,
    since: datetime | None = None,
    until: datetime | None = None,
    job_contains: str | None = None,
) -> tuple[list[Run], int]:
    """Runs newest first (by scheduled time), and how many match in all.

    ``job_contains`` keeps the runs of jobs whose id contains it, ignoring case.
    """
    conditions = []
    if job_id is not None:
        conditions.append(runs_table.c.job_id == job_id)
    if job_contains:
        pattern = job_contains.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        conditions.append(runs_table.c.job_id.ilike(f"%{pattern}%", escape="\\"))
    if status is not None:
        conditions.append(runs_table.c.status == status)
    if since is not None:
        conditions.append(runs_table.c.scheduled_for >= since)
    if until is not None:
        conditions.append(runs_table.c.scheduled_for < until)
    total = conn.execute(select(func.count()).select_from(runs_table).where(*conditions))
    rows = conn.execute(
        select(runs_table)
        .where(*conditions)
        .order_by(runs_table.c.scheduled_for.desc(), runs_table.c.id)
        .limit(limit)
        .offset(offset)
    )
    return [run_from_row(row) for row in rows], int(total.scalar_one())


def latest_runs(conn: Connection, job_ids: list[str]) -> dict[str, Run]:
    """The run (or missed record) with the latest scheduled time of each stored job, by id.

    One backward step along the unique key (job, scheduled time) per job, so a
    page of jobs costs the same however long their histories are.
    """
    if not job_ids:
        return {}
    other = runs_table.alias("later")
    newest = (
        select(other.c.id)
        .where(other.c.job_id == jobs_table.c.id)
        .order_by(other.c.scheduled_for.desc())
        .limit(1)
        .correlate(jobs_table)
        .scalar_subquery()
    )
    newest_ids = select(newest).where(jobs_table.c.id.in_(job_ids))
    rows = conn.execute(select(runs_table).where(runs_table.c.id.in_(newest_ids)))
    return {row.job_id: run_from_row(row) for row in rows}


def failing_since(conn: Connection, job_ids: list[str]) -> dict[str, datetime]:
    """For each of ``job_ids`` whose runs fail, the scheduled time of the first failure
    after its latest success (of all its failures if it never succeeded).

    Walks the unique key (job, scheduled time) back over the failing streak: meant
    for the failing jobs of one page.
    """
    found: dict[str, datetime] = {}
    for job_id in job_ids:
        # Backwards from the newest, so the walk is as long as the failing streak.
        ok = conn.execute(
            select(runs_table.c.scheduled_for)
            .where(runs_table.c.job_id == job_id, runs_table.c.status == SUCCESS)
            .order_by(runs_table.c.scheduled_for.desc())
            .limit(1)
        ).scalar()
        conditions = [runs_table.c.job_id == job_id, runs_table.c.status.in_(FAILING_STATUSES)]
        if ok is not None:
            conditions.append(runs_table.c.scheduled_for > ok)
        first = conn.execute(select(func.min(runs_table.c.scheduled_for)).where(*conditions))
        moment = as_utc(first.scalar())
        if moment is not None:
            found[job_id] = moment
    return found


def select_attempts(conn: Connection, run_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    """Earlier attempts of the given runs, oldest first, keyed by run id."""
    found: dict[str, list[dict[str, Any]]] = {}
    if not run_ids:
        return found
    rows = conn.execute(
        select(attempts_table)
        .where(attempts_table.c.run_id.in_(run_ids))
        .order_by(attempts_table.c.run_id, attempts_table.c.attempt)
    )
    for row in rows:
        found.setdefault(row.run_id, []).append(
            {
                "attempt": row.attempt,
                "status": row.status,
                "started_at": _iso(as_utc(row.started_at)),
                "ended_at": _iso(as_utc(row.ended_at)),
                "error_type": row.error_type,
                "error_message": row.error_message,
                "node": row.node,
            }
        )
    return found


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def prune(
    conn: Connection,
    *,
    older_than: datetime | None,
    keep_per_job: int,
    batch: int,
    job_ids: list[str] | None = None,
) -> int:
    """Delete up to ``batch`` ended runs: older than ``older_than``, or beyond the newest
    ``keep_per_job`` of their job (of ``job_ids``; None: of every job, found by a
    ``GROUP BY`` over the job index).  Returns how many went; call again until it is 0.

    Runs in progress or waiting are never deleted, nor their attempts.  Each job's
    excess is one query on the (job, scheduled time) index.
    """
    final = runs_table.c.status.not_in(("running", "waiting"))
    doomed: list[str] = []
    if older_than is not None:
        doomed = list(
            conn.execute(
                select(runs_table.c.id)
                .where(final, runs_table.c.scheduled_for < older_than)
                .limit(batch)
            ).scalars()
        )
    if keep_per_job and len(doomed) < batch:
        crowded: Iterable[str] = (
            job_ids
            if job_ids is not None
            else conn.execute(
                select(runs_table.c.job_id)
                .group_by(runs_table.c.job_id)
                .having(func.count() > keep_per_job)
            ).scalars()
        )
        for job_id in crowded:
            doomed.extend(
                conn.execute(
                    select(runs_table.c.id)
                    .where(final, runs_table.c.job_id == job_id)
                    .order_by(runs_table.c.scheduled_for.desc())
                    .offset(keep_per_job)
                    .limit(batch - len(doomed))
                ).scalars()
            )
            if len(doomed) >= batch:
                break
    if not doomed:
        return 0
    conn.execute(delete(attempts_table).where(attempts_table.c.run_id.in_(doomed)))
    conn.execute(delete(runs_table).where(runs_table.c.id.in_(doomed)))
    return len(doomed)
