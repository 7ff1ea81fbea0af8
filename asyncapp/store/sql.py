"""The :class:`~asyncapp.store.interface.Store` on SQLite and PostgreSQL.

Each method is one transaction on one of the :class:`~asyncapp.store.database.Database`
threads (write, read, heartbeat), composed of the statements of
:mod:`~asyncapp.store.claims`, :mod:`~asyncapp.store.jobs`, :mod:`~asyncapp.store.runs`,
:mod:`~asyncapp.store.processes` and :mod:`~asyncapp.store.requests`; the
dialect differences stay in those modules and here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import delete, insert, inspect, select, text, update
from sqlalchemy.engine import Connection

from asyncapp.constants import (
    ADD,
    FAILING_STATUSES,
    MODIFY,
    REMOVE,
    RUNNING,
    JobFilter,
    JobSort,
    SchedulerState,
)
from asyncapp.errors import JobExists, JobNotFound
from asyncapp.model.change import Actor, Change
from asyncapp.model.job import JobDef
from asyncapp.model.run import Run
from asyncapp.store import requests
from asyncapp.store.claims import (
    Due,
    Outcome,
    Reasons,
    claim,
    end_runs,
    interrupt_strays,
    kept_ends,
    reap,
    record_attempts,
)
from asyncapp.store.database import Database
from asyncapp.store.interface import (
    Answer,
    Ends,
    Heartbeat,
    JobPage,
    Overview,
    ProcessRow,
    Reaped,
    Recorded,
    RunPage,
)
from asyncapp.store.jobs import CHANNEL, JobStore
from asyncapp.store.processes import read_live, registered
from asyncapp.store.runs import (
    failing_since,
    get_run,
    latest_runs,
    prune,
    select_attempts,
    select_runs,
)
from asyncapp.store.tables import processes_table, runs_table

log = logging.getLogger("asyncapp.store")
T = TypeVar("T")

#: APScheduler's ``SQLAlchemyJobStore`` table, which asyncapp never reads.
APSCHEDULER_TABLE = "apscheduler_jobs"
#: Ids per ``IN (...)`` list.
CHUNK = 500


class SqlStore:
    """The store on one :class:`Database` (see :mod:`asyncapp.store.interface`)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        #: The statements on jobs, changes and the scheduler-wide state.
        self.rows = JobStore(db)

    @classmethod
    def at(cls, url: str, **waits: float) -> SqlStore:
        """A store on the database at ``url`` (not opened yet)."""
        return cls(Database(url, **waits))

    @property
    def down_since(self) -> float | None:
        return self.db.down_since

    @property
    def listens(self) -> bool:
        return self.db.is_postgres

    async def open(self, *, migrate: bool = True) -> None:
        await self.db.open(migrate=migrate)

    async def close(self) -> None:
        await self.db.close()

    async def ping(self) -> None:
        await self.db.read(lambda conn: conn.execute(text("SELECT 1")))

    async def ping_write(self) -> None:
        await self.db.write(lambda conn: conn.execute(text("SELECT 1")))

    # -- runs: claims and ends --------------------------------------------------------

    async def claim(
        self, dues: list[Due], ends: Ends, *, node: str, process_id: str, reasons: Reasons
    ) -> tuple[Recorded, list[Outcome] | None]:
        def transaction(conn: Connection) -> tuple[Recorded, list[Outcome] | None]:
            recorded = self._record(conn, ends, process_id)
            if not registered(conn, self.db, process_id):
                return recorded, None  # presumed dead: fenced until it rejoins
            outcomes = claim(self.db, conn, dues, node=node, process_id=process_id, reasons=reasons)
            return recorded, outcomes

        return await self.db.write(transaction)

    async def record_ends(self, ends: Ends, process_id: str) -> Recorded:
        return await self.db.write(lambda conn: self._record(conn, ends, process_id))

    def _record(self, conn: Connection, ends: Ends, process_id: str) -> Recorded:
        if ends.attempts:
            record_attempts(conn, self.db, ends.attempts, process_id)
        runs = ends.runs
        if not runs and not ends.buffered:
            return Recorded()
        count, started = end_runs(conn, self.db, runs, process_id, buffered=ends.buffered)
        kept = runs if count >= len(runs) else kept_ends(conn, runs)
        if count < len(runs):
            log.warning(
                "%d of %d runs ended after another process had ended them (this process was "
                "presumed dead, or a newer run cancelled them); the history keeps that verdict",
                len(runs) - count,
                len(runs),
            )
        return Recorded(kept=kept, started=started)

    # -- processes --------------------------------------------------------------------

    async def register(self, process_id: str, row: ProcessRow) -> Heartbeat:
        def transaction(conn: Connection) -> Heartbeat:
            clock = self.db.clock(conn)
            conn.execute(
                insert(processes_table).values(
                    id=process_id, started_at=clock, heartbeat_at=clock, **row
                )
            )
            return Heartbeat(clock, read_live(conn))

        return await self.db.beat(transaction)

    async def refresh(self, process_id: str, row: ProcessRow) -> Heartbeat | None:
        def transaction(conn: Connection) -> Heartbeat | None:
            clock = self.db.clock(conn)
            refreshed = conn.execute(
                update(processes_table)
                .where(processes_table.c.id == process_id)
                .values(heartbeat_at=clock, **row)
            )
            if not refreshed.rowcount:
                return None
            return Heartbeat(clock, read_live(conn))

        return await self.db.beat(transaction)

    async def unregister(self, process_id: str) -> None:
        await self.db.write(
            lambda conn: conn.execute(
                delete(processes_table).where(processes_table.c.id == process_id)
            )
        )

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
        def transaction(conn: Connection) -> Reaped:
            if not registered(conn, self.db, process_id):
                return Reaped()  # presumed dead: the next heartbeat fences this process
            reruns: list[tuple[Run, JobDef]] = []
            interrupted: list[str] = []
            # Judged here, on the write thread, when the transaction runs: it may have
            # waited (behind a claim on a held lock) while this process stalled.
            if judge():
                clock = self.db.clock(conn)
                gone = conn.execute(
                    delete(processes_table)
                    .where(processes_table.c.heartbeat_at < clock - process_timeout)
                    .returning(processes_table.c.node)
                ).scalars()
                for dead in gone.all():
                    log.warning(
                        "process %s stopped heartbeating; its runs in progress are interrupted",
                        dead,
                    )
                reruns = reap(
                    conn,
                    self.db,
                    node=node,
                    process_id=process_id,
                    can_run=can_run,
                    ended=interrupted,
                )
            for run_id in interrupt_strays(conn, process_id, running_here, stray_before):
                log.warning("run %s was claimed here but never ran here; it is interrupted", run_id)
            # Runs this process runs that the ledger says ended elsewhere: a newer run
            # cancelled them.  (Runs the ledger says run here but that have no task
            # here are the strays above.)
            ended: list[str] = []
            for start in range(0, len(running_here), CHUNK):
                chunk = running_here[start : start + CHUNK]
                ended.extend(
                    conn.execute(
                        select(runs_table.c.id).where(
                            runs_table.c.id.in_(chunk), runs_table.c.status != RUNNING
                        )
                    ).scalars()
                )
            return Reaped(reruns=reruns, ended=ended, interrupted=interrupted)

        return await self.db.write(transaction)

    # -- the change feed --------------------------------------------------------------

    async def last_change_id(self) -> int:
        return await self.db.read(self.rows.last_change_id)

    async def changes_after(self, after: int) -> list[Change]:
        return await self.db.read(lambda conn: self.rows.changes_after(conn, after))

    async def listen(self, signal: Callable[[], None]) -> None:
        """``LISTEN`` on a connection of its own, through psycopg's async API, on the loop."""
        import psycopg

        conninfo = self.db.url.set(drivername="postgresql").render_as_string(hide_password=False)
        delay = 0.5
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    conninfo, autocommit=True, connect_timeout=5
                ) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    delay = 0.5
                    signal()  # catch up on what was missed while not listening
                    async for _ in conn.notifies():
                        signal()
            except (psycopg.Error, OSError) as exc:
                log.debug("listening for changes failed (%s); retrying in %ss", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10)

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
    ) -> JobDef:
        store = self.rows

        def change(conn: Connection) -> JobDef:
            job = self._locked(conn, job_id)
            edited = edit(job)
            if edited is None:
                return job
            updated, detail = edited
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

    # -- housekeeping -----------------------------------------------------------------

    async def prune_answers(self, before: float) -> int:
        return await self.db.write(lambda conn: requests.prune(conn, before))

    async def prune_changes(self, *, older_than: datetime, batch: int) -> int:
        return await self.db.write(
            lambda conn: self.rows.prune_changes(conn, older_than=older_than, batch=batch)
        )

    async def prune_runs(
        self, *, older_than: datetime | None, keep_per_job: int, batch: int
    ) -> int:
        return await self.db.write(
            lambda conn: prune(conn, older_than=older_than, keep_per_job=keep_per_job, batch=batch)
        )
