"""Run history: one row per run of a job, the seed of the fenced run ledger.

A run is recorded when it starts (status ``running``) and again when it ends;
both go through the write-behind :class:`~asyncapp.db.Writer`, keyed by run id,
so a short run costs one insert.  Reads flush first: a run the API started is
visible to the caller's next read.
"""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import Connection

from .db import Database, Writer, as_utc, runs_table

STATUSES = ("running", "success", "error", "timeout", "missed", "interrupted")
FINAL_STATUSES = STATUSES[1:]


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, kw_only=True)
class Run:
    """One run of a job; datetimes are aware UTC."""

    job_id: str
    scheduled_for: datetime
    node: str
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    status: str = "running"
    started_at: datetime | None = None
    ended_at: datetime | None = None
    error_type: str | None = None
    error_message: str | None = None
    attempt: int = 1

    def finish(self, status: str, error: BaseException | None = None) -> Run:
        """This run, ended now with ``status`` (and the error's type and message)."""
        return replace(
            self,
            status=status,
            ended_at=utcnow(),
            error_type=None if error is None else _qualified_name(error),
            error_message=None if error is None else str(error)[:2000],
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: datetimes as ISO 8601."""
        return {
            key: value.isoformat() if isinstance(value, datetime) else value
            for key, value in asdict(self).items()
        }


class Ledger:
    """Records runs and reads them back."""

    def __init__(self, db: Database, writer: Writer) -> None:
        self.db = db
        self.writer = writer

    def record(self, run: Run) -> None:
        """Queue the run's current state for writing; returns at once."""
        # Shallow on purpose: dataclasses.asdict deep-copies every datetime,
        # 18 us per call against 0.4 us, twice per run.
        values = {f.name: getattr(run, f.name) for f in fields(run) if f.name != "id"}
        self.writer.upsert(runs_table, run.id, values)

    async def list(
        self,
        *,
        job_id: str | None = None,
        status: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> tuple[list[Run], int]:
        """Runs newest first (by scheduled time), and how many match in all."""
        await self.writer.flush()
        return await self.db.run(
            self.db.transaction, lambda conn: _select(conn, job_id, status, limit, offset)
        )


def _select(
    conn: Connection, job_id: str | None, status: str | None, limit: int, offset: int
) -> tuple[list[Run], int]:
    conditions = []
    if job_id is not None:
        conditions.append(runs_table.c.job_id == job_id)
    if status is not None:
        conditions.append(runs_table.c.status == status)
    total = conn.execute(
        select(func.count()).select_from(runs_table).where(*conditions)
    ).scalar_one()
    rows = conn.execute(
        select(runs_table)
        .where(*conditions)
        .order_by(runs_table.c.scheduled_for.desc(), runs_table.c.id)
        .limit(limit)
        .offset(offset)
    )
    runs = [
        Run(
            id=r.id,
            job_id=r.job_id,
            scheduled_for=as_utc(r.scheduled_for),  # type: ignore[arg-type]
            started_at=as_utc(r.started_at),
            ended_at=as_utc(r.ended_at),
            status=r.status,
            error_type=r.error_type,
            error_message=r.error_message,
            node=r.node,
            attempt=r.attempt,
        )
        for r in rows
    ]
    return runs, int(total)


def _qualified_name(error: BaseException) -> str:
    cls = type(error)
    return (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )
