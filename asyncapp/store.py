"""The JSON job store: APScheduler's in-memory store, persisted write-behind.

APScheduler calls its job store synchronously on the loop thread, every time a
job fires (DESIGN.md Fact 5).  So the scheduler reads and writes memory only
(:class:`MemoryJobStore`, which is already sorted by next run time) and every
change is queued on :class:`~asyncapp.db.Writer`, which writes it off the loop.
The database stays the source of truth: it is loaded at start, and
:meth:`JobStore.sync` pulls in what other processes (the CLI, later other
workers) changed, detected by the ``jobs_revision`` counter.

Rows hold JSON only (function reference, trigger spec, args, kwargs, options),
never pickles, and functions are resolved through the ``@task`` registry, so
nothing in the database can make us import or run arbitrary code.  A row whose
function is not registered is kept and reported as broken, never deleted.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from typing import Any

from apscheduler.job import Job
from apscheduler.jobstores.base import JobLookupError
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.schedulers.base import BaseScheduler
from sqlalchemy import select
from sqlalchemy.engine import Connection

from .db import Database, Writer, bump_revision, jobs_table, read_revision
from .errors import InvalidJob, UnknownFunction
from .tasks import Registry
from .triggers import build_trigger, trigger_to_spec

log = logging.getLogger("asyncapp.store")


@dataclass(frozen=True)
class Row:
    """One stored job, as in the database."""

    id: str
    func: str
    next_run_time: float | None
    data: str

    @property
    def fields(self) -> dict[str, Any]:
        return json.loads(self.data)  # type: ignore[no-any-return]


class JobStore(MemoryJobStore):
    """APScheduler job store: memory for the scheduler, the database for durability."""

    def __init__(self, db: Database, registry: Registry, timezone: tzinfo) -> None:
        super().__init__()
        self.db = db
        self.registry = registry
        self.timezone = timezone
        self.writer: Writer | None = None
        #: Stored jobs whose function is not registered, by id.
        self.broken: dict[str, Row] = {}
        #: The code declaration (``@task(trigger)``) each code-defined job was built from.
        self.declared: dict[str, dict[str, Any]] = {}
        self._primed: list[Row] = []
        self._known_revision = -1
        self._batches = 0
        self._written_in_batch: dict[str, int] = {}
        # The row of each job in memory, as last loaded or queued: lets a reload
        # skip unchanged jobs without serialising each one again on the loop.
        self._rows: dict[str, Row] = {}

    # -- loading -----------------------------------------------------------

    def load(self, conn: Connection) -> tuple[int, int, list[Row]]:
        """Read every row (database thread): (revision, batch counter, rows).

        The revision is read first: without snapshot isolation a change committed
        between the two reads is then in the rows and also makes the next check
        reload, instead of being marked as seen without having been read.
        """
        revision = read_revision(conn)
        rows = [
            Row(r.id, r.func, r.next_run_time, r.data)
            for r in conn.execute(select(jobs_table).order_by(jobs_table.c.id))
        ]
        # Set here, on the database thread, where after_batch also runs: set on
        # the loop after the await, it could go back behind a batch written in
        # between, and every later batch would look like another process's.
        self._known_revision = revision
        return revision, self._batches, rows

    async def prime(self) -> None:
        """Load the stored jobs; they enter memory when the scheduler starts."""
        _, _, rows = await self.db.run(self.db.transaction, self.load)
        self._primed = rows

    def start(self, scheduler: BaseScheduler, alias: str) -> None:
        super().start(scheduler, alias)
        rows, self._primed = self._primed, []
        for row in rows:
            job = self._job_or_broken(row)
            if job is not None:
                MemoryJobStore.add_job(self, job)
                self._rows[row.id] = row

    def shutdown(self) -> None:
        """Keep jobs: they live on in the database and in memory for a restart."""

    # -- APScheduler's job store interface: memory first, then queue the write --

    def add_job(self, job: Job) -> None:
        row = self.row(job)
        super().add_job(job)
        self.broken.pop(job.id, None)
        self._queue_upsert(row)

    def update_job(self, job: Job) -> None:
        row = self.row(job)
        super().update_job(job)
        self._queue_upsert(row)

    def remove_job(self, job_id: str) -> None:
        super().remove_job(job_id)
        self.declared.pop(job_id, None)
        self._queue_delete(job_id)

    def remove_all_jobs(self) -> None:
        for job in self.get_all_jobs():
            self._queue_delete(job.id)
        super().remove_all_jobs()
        self.declared.clear()

    def remove_broken(self, job_id: str) -> None:
        """Delete a stored job whose function is not registered."""
        if self.broken.pop(job_id, None) is None:
            raise JobLookupError(job_id)
        self._queue_delete(job_id)

    # -- rows ----------------------------------------------------------------

    def row(self, job: Job) -> Row:
        """The database row of a job.

        :raises InvalidJob: if args or kwargs are not JSON.
        """
        data = {
            "name": job.name,
            "args": list(job.args),
            "kwargs": dict(job.kwargs),
            "trigger": trigger_to_spec(job.trigger),
            "misfire_grace_time": job.misfire_grace_time,
            "max_instances": job.max_instances,
            "coalesce": job.coalesce,
            "declared": self.declared.get(job.id),
        }
        try:
            text = json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError):
            raise InvalidJob(
                [{"field": "args", "message": "args and kwargs must be JSON values"}]
            ) from None
        return Row(job.id, job.func_ref, _timestamp(job.next_run_time), text)

    def job_from_row(self, row: Row) -> Job:
        """Build the Job a row describes.

        :raises UnknownFunction: if its function is not registered.
        """
        task = self.registry.resolve(row.func)
        fields = row.fields
        if fields.get("declared") is not None:
            self.declared[row.id] = fields["declared"]
        next_run = (
            None if row.next_run_time is None else datetime.fromtimestamp(row.next_run_time, UTC)
        )
        job = Job(
            self._scheduler,
            id=row.id,
            func=task.func,
            args=tuple(fields["args"]),
            kwargs=fields["kwargs"],
            trigger=build_trigger(fields["trigger"], self.timezone),
            executor="default",
            name=fields["name"],
            misfire_grace_time=fields["misfire_grace_time"],
            max_instances=fields["max_instances"],
            coalesce=fields["coalesce"],
            next_run_time=next_run,
        )
        job._jobstore_alias = self._alias
        return job

    def _job_or_broken(self, row: Row) -> Job | None:
        try:
            return self.job_from_row(row)
        except (UnknownFunction, InvalidJob, KeyError, TypeError, ValueError) as exc:
            if row.id not in self.broken:
                log.error("job %s is broken and will not run: %s", row.id, exc)
            self.broken[row.id] = row
            return None

    # -- writes --------------------------------------------------------------

    def _queue_upsert(self, row: Row) -> None:
        self._rows[row.id] = row
        if self.writer is not None:
            self.writer.upsert(
                jobs_table,
                row.id,
                {"func": row.func, "next_run_time": row.next_run_time, "data": row.data},
            )

    def _queue_delete(self, job_id: str) -> None:
        self._rows.pop(job_id, None)
        if self.writer is not None:
            self.writer.delete(jobs_table, job_id)

    def after_batch(self, conn: Connection, keys: list[tuple[str, str]]) -> None:
        """Writer hook (database thread): bump the revision if jobs changed."""
        job_ids = [row_id for table, row_id in keys if table == jobs_table.name]
        if not job_ids:
            return
        self._batches += 1
        for job_id in job_ids:
            self._written_in_batch[job_id] = self._batches
        revision = bump_revision(conn)
        if revision == self._known_revision + 1:
            # Nobody else wrote since we last looked: no need to reload.
            self._known_revision = revision

    # -- changes made by other processes ---------------------------------------

    async def sync(self) -> bool:
        """Apply job changes other processes made; True if anything was reloaded.

        Local changes win over older rows: a row is skipped when a newer local
        write for that job is queued or was written after the rows were read.
        """
        if self._scheduler is None or not await self.db.run(self.db.transaction, self._changed):
            return False
        revision, snapshot, rows = await self.db.run(self.db.transaction, self.load)
        pending = self.writer.pending_keys() if self.writer is not None else set()

        def newer_locally(job_id: str) -> bool:
            return (jobs_table.name, job_id) in pending or (
                self._written_in_batch.get(job_id, 0) > snapshot
            )

        with self._scheduler._jobstores_lock:
            seen = set()
            for row in rows:
                seen.add(row.id)
                if not newer_locally(row.id):
                    self._apply_row(row)
            for job in self.get_all_jobs():
                if job.id not in seen and not newer_locally(job.id):
                    MemoryJobStore.remove_job(self, job.id)
                    self._rows.pop(job.id, None)
            for job_id in set(self.broken) - seen:
                del self.broken[job_id]
        self._scheduler.wakeup()
        log.info("reloaded jobs changed by another process (revision %s)", revision)
        return True

    def _changed(self, conn: Connection) -> bool:
        """Whether another process wrote jobs since we last looked (database thread)."""
        return read_revision(conn) != self._known_revision

    def _apply_row(self, row: Row) -> None:
        current = self.lookup_job(row.id)
        if current is not None and self._rows.get(row.id) == row:
            return
        job = self._job_or_broken(row)
        if job is None:
            if current is not None:
                MemoryJobStore.remove_job(self, row.id)
                self._rows.pop(row.id, None)
            return
        self._rows[row.id] = row
        self.broken.pop(row.id, None)
        if current is None:
            MemoryJobStore.add_job(self, job)
        else:
            MemoryJobStore.update_job(self, job)


def _timestamp(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()
