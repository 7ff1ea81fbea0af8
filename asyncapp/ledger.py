"""The run ledger: one row per claimed scheduled time, as a run or a missed record.

A run's row is written by its claim (status ``running``, in the claim's
transaction) and ended by :class:`Recorder`, which batches the ends of runs
into one transaction per batch.  Ending is conditional: ``WHERE status =
'running' AND process_id = <this process>``, so a run that another process
already declared ``interrupted`` (this one was presumed dead) keeps that
verdict, and the late end is logged instead.

The recorder holds ends of runs that could not be written yet (the database
is away) and retries them; it cannot grow without bound, because no run
starts without a claim, and no claim is made while the database is away: it
holds at most the runs that were in progress when the outage began.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import uuid
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, bindparam, func, select, update
from sqlalchemy.engine import Connection

from .constants import MAX_ERROR_MESSAGE, RUNNING, RunStatus
from .db import Database, as_utc, storable
from .errors import DatabaseUnavailable
from .schema import attempts_table, runs_table

log = logging.getLogger("asyncapp.run")


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True, kw_only=True)
class Run:
    """One row of the ledger; datetimes are aware UTC."""

    job_id: str
    scheduled_for: datetime
    node: str
    id: str = field(default_factory=new_id)
    status: RunStatus = RUNNING
    started_at: datetime | None = None
    ended_at: datetime | None = None
    error_type: str | None = None
    error_message: str | None = None
    attempt: int = 1
    process_id: str | None = None
    reason: str | None = None
    missed_until: datetime | None = None

    @property
    def key(self) -> str:
        """The idempotency key of this scheduled time: the same across retries and processes."""
        return f"{self.job_id}@{self.scheduled_for.isoformat()}"

    def finish(self, status: RunStatus, error: BaseException | None = None) -> Run:
        """This run, ended now with ``status`` (and the error's type and message)."""
        return replace(
            self,
            status=status,
            ended_at=utcnow(),
            error_type=None if error is None else qualified_name(error),
            error_message=None if error is None else storable(str(error), MAX_ERROR_MESSAGE),
        )

    def row(self) -> dict[str, Any]:
        """Its columns (shallow: ``asdict`` deep-copies every datetime, 40x slower)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: datetimes as ISO 8601."""
        return {
            key: value.isoformat() if isinstance(value, datetime) else value
            for key, value in asdict(self).items()
        }


def run_from_row(row: Any) -> Run:
    return Run(
        id=row.id,
        job_id=row.job_id,
        scheduled_for=as_utc(row.scheduled_for),  # type: ignore[arg-type]
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


class Recorder:
    """Writes the ends of runs in batches, off the loop; retries while the database is away."""

    RETRY_SECONDS = (0.5, 1.0, 2.0, 5.0)
    #: Seconds results wait for company before they are written: at 200 runs a
    #: second, one transaction per 20 ms instead of one per run, so claims (which
    #: share the write thread) rarely wait behind a result.
    LINGER = 0.02
    #: Results that are written at once, without lingering.
    BATCH = 200

    def __init__(self, db: Database, process_id: str) -> None:
        self.db = db
        self.process_id = process_id
        self._pending: list[Run] = []
        self._writing: list[Run] = []
        #: True while the last attempt to write results failed.
        self.failing = False
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._urgent = False
        self._task: asyncio.Task[None] | None = None

    @property
    def pending(self) -> int:
        """Run results not written yet."""
        return len(self._pending) + len(self._writing)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="asyncapp-recorder")

    async def stop(self, wait: float) -> int:
        """Write what is pending (waiting at most ``wait`` s); returns how many were lost."""
        await self.flush(wait)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        lost = len(self._pending) + len(self._writing)
        if lost:
            log.error("%d run results could not be written: the database is unavailable", lost)
        return lost

    def finish(self, run: Run) -> None:
        """Queue the end of ``run``; returns at once."""
        self._pending.append(run)
        self._idle.clear()
        self._wake.set()

    def take(self) -> list[Run]:
        """Hand the queued results to a claim transaction, which writes them first.

        A run that ended must not count against ``max_instances`` in the next
        claim just because its result was still queued; writing results in the
        claim's own transaction also saves a transaction.  Give them back with
        :meth:`taken` once committed, or :meth:`untake` if not.
        """
        taken, self._pending = self._pending, []
        return taken

    def taken(self, runs: list[Run]) -> None:
        if runs and not self._pending and not self._writing:
            self._urgent = False
            self._idle.set()

    def untake(self, runs: list[Run]) -> None:
        if runs:
            self._pending[:0] = runs
            self._wake.set()

    def write(self, conn: Connection, batch: list[Run]) -> None:
        """Write ``batch`` in the caller's transaction (database thread)."""
        if batch:
            self._write(conn, batch)

    async def flush(self, wait: float | None = None) -> bool:
        """Wait until everything queued is written, at most ``wait`` s; True if it was."""
        if self._idle.is_set():
            return True
        self._urgent = True
        self._wake.set()
        try:
            async with asyncio.timeout(wait):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    async def _run(self) -> None:
        failures = 0
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._urgent and 0 < len(self._pending) < self.BATCH:
                await asyncio.sleep(self.LINGER)
            self._writing, self._pending = self._pending, []
            if not self._writing:
                self._idle.set()
                continue
            try:
                await self.db.write(functools.partial(self._write, batch=self._writing))
            except DatabaseUnavailable:
                self.failing = True
                self._pending[:0] = self._writing
                self._writing = []
                delay = self.RETRY_SECONDS[min(failures, len(self.RETRY_SECONDS) - 1)]
                failures += 1
                await asyncio.sleep(delay)
                self._wake.set()
                continue
            except Exception:
                log.exception("writing %d run results failed; they are dropped", len(self._writing))
            failures = 0
            self.failing = False
            self._writing = []
            if self._pending:
                self._wake.set()
            else:
                self._urgent = False
                self._idle.set()

    def _write(self, conn: Connection, batch: list[Run]) -> None:
        ended = conn.execute(
            END_RUN,
            [
                {
                    "_id": run.id,
                    "_process": self.process_id,
                    "status": run.status,
                    "started_at": run.started_at,
                    "ended_at": run.ended_at,
                    "error_type": run.error_type,
                    "error_message": run.error_message,
                }
                for run in batch
            ],
        )
        if ended.rowcount is not None and 0 <= ended.rowcount < len(batch):
            log.warning(
                "%d of %d runs ended after another process had marked them interrupted "
                "(this process was presumed dead); their results are kept out of the history",
                len(batch) - ended.rowcount,
                len(batch),
            )


#: Ends a run this process claimed, unless another process ended it meanwhile.
END_RUN = (
    update(runs_table)
    .where(
        and_(
            runs_table.c.id == bindparam("_id"),
            runs_table.c.process_id == bindparam("_process"),
            runs_table.c.status == RUNNING,
        )
    )
    .values(
        status=bindparam("status"),
        started_at=bindparam("started_at"),
        ended_at=bindparam("ended_at"),
        error_type=bindparam("error_type"),
        error_message=bindparam("error_message"),
    )
)


def select_runs(
    conn: Connection,
    *,
    job_id: str | None,
    status: str | None,
    limit: int,
    offset: int,
    since: datetime | None = None,
    until: datetime | None = None,
) -> tuple[list[Run], int]:
    """Runs newest first (by scheduled time), and how many match in all."""
    conditions = []
    if job_id is not None:
        conditions.append(runs_table.c.job_id == job_id)
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


def qualified_name(error: BaseException) -> str:
    cls = type(error)
    name = (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )
    return storable(name, 200) or ""


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()
