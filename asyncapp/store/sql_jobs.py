"""Jobs, their changes, the scheduler-wide state and the run history: the half of
:class:`~asyncapp.store.sql.SqlStore` that the job service uses.

Each method is one transaction on the :class:`~asyncapp.store.database.Database`'s
read or write thread; a change writes its row of change history (and, on
PostgreSQL, its notification) in the same transaction (:mod:`asyncapp.store.jobs`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection

from asyncapp.constants import (
    ADD,
    FAILING_STATUSES,
    MODIFY,
    REMOVE,
    JobFilter,
    JobSort,
    SchedulerState,
)
from asyncapp.errors import JobExists, JobNotFound
from asyncapp.model.change import Actor, Change
from asyncapp.model.job import JobDef
from asyncapp.model.run import Run
from asyncapp.store import requests
from asyncapp.store.claims import record_skipped
from asyncapp.store.database import Database
from asyncapp.store.interface import Answer, JobPage, Overview, RunPage, Skipping
from asyncapp.store.jobs import JobStore
from asyncapp.store.processes import read_live
from asyncapp.store.runs import failing_since, get_run, latest_runs, select_attempts, select_runs

T = TypeVar("T")

#: APScheduler's ``SQLAlchemyJobStore`` table, which asyncapp never reads.
APSCHEDULER_TABLE = "apscheduler_jobs"


class SqlJobs:
    """Reading and changing jobs (a part of :class:`~asyncapp.store.sql.SqlStore`)."""

    db: Database
    #: The statements on jobs, changes and the scheduler-wide state.
    rows: JobStore

    # -- reading jobs -----------------------------------------------------------------

    async def jobs(self) -> list[JobDef]:
        return await self.db.read(self.rows.all)

    async def jobs_and_state(
        self, job_ids: list[str] | None = None
    ) -> tuple[dict[str, JobDef], SchedulerState]:
        store = self.rows

        def read(conn: Connection) -> tuple[dict[str, JobDef], SchedulerState]:
            if job_ids is None:
                found = {job.id: job for job in store.all(conn)}
            else:
                found = store.some(conn, job_ids)
            return found, store.scheduler_state(conn)

        return await self.db.read(read)

    async def map_jobs(self, fn: Callable[[JobDef], T]) -> list[T]:
        return await self.db.read(lambda conn: [fn(job) for job in self.rows.each(conn)])

    async def job(self, job_id: str) -> JobDef | None:
        return await self.db.read(lambda conn: self.rows.get(conn, job_id))

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
    ) -> JobPage:
        def read(conn: Connection) -> JobPage:
            jobs, total = self.rows.page(
                conn,
                search=search,
                state=state,
                registered=registered,
                limit=limit,
                offset=offset,
                sort=sort,
                descending=descending,
            )
            last = latest_runs(conn, [job.id for job in jobs])
            failing = [job_id for job_id, run in last.items() if run.status in FAILING_STATUSES]
            return JobPage(jobs, total, last, failing_since(conn, failing))

        return await self.db.read(read)

    async def job_counts(self, registered: list[str]) -> dict[str, int]:
        return await self.db.read(lambda conn: self.rows.counts(conn, registered))

    async def overview(self, *, jobs: bool = False) -> Overview:
        store = self.rows

        def read(conn: Connection) -> Overview:
            return Overview(
                state=store.scheduler_state(conn),
                jobs=store.all(conn) if jobs else [],
                live=read_live(conn),
                clock=self.db.clock(conn),
            )

        return await self.db.read(read)

    async def scheduler_status(self) -> tuple[SchedulerState, Change | None]:
        store = self.rows
        return await self.db.read(
            lambda conn: (store.scheduler_state(conn), store.scheduler_change(conn))
        )

    async def history(
        self, job_id: str | None, limit: int, offset: int
    ) -> tuple[list[Change], int]:
        return await self.db.read(lambda conn: self.rows.history(conn, job_id, limit, offset))

    async def run(self, run_id: str) -> Run | None:
        return await self.db.read(lambda conn: get_run(conn, run_id))

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
    ) -> RunPage:
        def read(conn: Connection) -> RunPage:
            runs, total = select_runs(
                conn,
                job_id=job_id,
                status=status,
                limit=limit,
                offset=offset,
                since=since,
                until=until,
                job_contains=job_contains,
            )
            earlier = select_attempts(conn, [run.id for run in runs if run.attempt > 1])
            return RunPage(runs, total, earlier)

        return await self.db.read(read)

    async def legacy_jobs(self) -> int:
        def count(conn: Connection) -> int:
            if not inspect(conn).has_table(APSCHEDULER_TABLE):
                return 0
            return int(conn.execute(text("SELECT count(*) FROM apscheduler_jobs")).scalar_one())

        return await self.db.read(count)

    # -- changing jobs ----------------------------------------------------------------

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
        store = self.rows

        def change(conn: Connection) -> JobDef | Answer:
            store.begin_change(conn)
            if key is not None:
                answered = requests.find(conn, *key)
                if answered is not None:
                    return answered
            if store.get(conn, job.id) is not None:
                raise JobExists(job.id)
            check(store.count(conn))
            now = time.time()
            added = store.write(
                conn, job, new=True, action=ADD, actor=actor, detail=detail, now=now
            )
            if key is not None and answer is not None:
                requests.save(conn, *key, answer(added), now)
            return added

        return await self.db.write(change)

    async def change_job(
        self,
        job_id: str,
        *,
        action: str,
        actor: Actor,
        edit: Callable[[JobDef], tuple[JobDef, dict[str, Any]] | None],
        skipped: Skipping | None = None,
    ) -> JobDef:
        store = self.rows

        def change(conn: Connection) -> JobDef:
            job = self._locked(conn, job_id)
            edited = edit(job)
            if edited is None:
                return job
            updated, detail = edited
            self._skipped(conn, skipped, job, updated)
            return store.write(
                conn, updated, new=False, action=action, actor=actor, detail=detail, now=time.time()
            )

        return await self.db.write(change)

    async def remove_job(self, job_id: str, actor: Actor) -> None:
        store = self.rows

        def change(conn: Connection) -> None:
            self._locked(conn, job_id)
            store.delete(conn, job_id)
            store.record(conn, action=REMOVE, job_id=job_id, actor=actor, detail={})

        await self.db.write(change)

    async def overdue_jobs(
        self,
        before: float,
        funcs: list[str],
        limit: int,
        choose: Callable[[list[tuple[str, float]]], list[str]],
    ) -> list[JobDef]:
        rows = self.rows

        def read(conn: Connection) -> list[JobDef]:
            wanted = choose(rows.overdue(conn, before, funcs, limit))
            found = rows.some(conn, wanted)
            return [found[job_id] for job_id in wanted if job_id in found]

        return await self.db.read(read)

    def _skipped(
        self, conn: Connection, skipped: Skipping | None, before: JobDef, after: JobDef
    ) -> None:
        """Record the due times ``before`` had that the change to ``after`` passes over."""
        if skipped is not None:
            record_skipped(
                conn,
                self.db,
                before,
                after,
                zone=skipped.zone,
                node=skipped.node,
                process_timeout=skipped.process_timeout,
            )

    def _locked(self, conn: Connection, job_id: str) -> JobDef:
        """Begin a change and lock ``job_id``'s row. :raises JobNotFound:"""
        self.rows.begin_change(conn)
        job = self.rows.get(conn, job_id, lock=True)
        if job is None:
            raise JobNotFound(job_id)
        return job

    async def save_jobs(
        self,
        jobs: list[JobDef],
        remove: list[str],
        *,
        actor: Actor,
        merge: Callable[[JobDef | None, JobDef], tuple[JobDef, dict[str, Any]] | None],
        skipped: Skipping | None = None,
    ) -> tuple[list[JobDef], list[str]]:
        store = self.rows

        def change(conn: Connection) -> tuple[list[JobDef], list[str]]:
            store.begin_change(conn)
            written: list[JobDef] = []
            now = time.time()
            for job in jobs:
                stored = store.get(conn, job.id, lock=True)
                merged = merge(stored, job)
                if merged is None:
                    continue
                updated, detail = merged
                if stored is not None:
                    self._skipped(conn, skipped, stored, updated)
                action = ADD if stored is None else MODIFY
                written.append(
                    store.write(
                        conn,
                        updated,
                        new=stored is None,
                        action=action,
                        actor=actor,
                        detail=detail,
                        now=now,
                    )
                )
            removed = []
            for job_id in remove:
                if store.delete(conn, job_id):
                    store.record(conn, action=REMOVE, job_id=job_id, actor=actor, detail={})
                    removed.append(job_id)
            return written, removed

        return await self.db.write(change)

    async def set_scheduler_state(self, state: SchedulerState, actor: Actor) -> None:
        store = self.rows

        def change(conn: Connection) -> None:
            store.begin_change(conn)
            before = store.set_scheduler_state(conn, state, time.time())
            if before != state:
                store.record(
                    conn, action=state, job_id=None, actor=actor, detail={"state": [before, state]}
                )

        await self.db.write(change)

    async def record_change(
        self, *, action: str, job_id: str | None, actor: Actor, detail: dict[str, Any]
    ) -> None:
        await self.db.write(
            lambda conn: self.rows.record(
                conn, action=action, job_id=job_id, actor=actor, detail=detail
            )
        )
