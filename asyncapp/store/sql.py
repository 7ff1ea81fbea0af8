"""The :class:`~asyncapp.store.interface.Store` on SQLite and PostgreSQL.

Each method is one transaction on one of the :class:`~asyncapp.store.database.Database`
threads (write, read, heartbeat), composed of the statements of
:mod:`~asyncapp.store.claims`, :mod:`~asyncapp.store.jobs`, :mod:`~asyncapp.store.runs`,
:mod:`~asyncapp.store.processes` and :mod:`~asyncapp.store.requests`; the
dialect differences stay in those modules and here.  The methods on jobs are
in :mod:`~asyncapp.store.sql_jobs`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime
from typing import TypeVar

from sqlalchemy import delete, insert, select, text, update
from sqlalchemy.engine import Connection

from asyncapp.constants import (
    RUNNING,
)
from asyncapp.model.change import Change
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
    Ends,
    Heartbeat,
    ProcessRow,
    Reaped,
    Recorded,
)
from asyncapp.store.jobs import CHANNEL, JobStore
from asyncapp.store.processes import read_live, registered
from asyncapp.store.runs import (
    prune,
)
from asyncapp.store.sql_jobs import SqlJobs
from asyncapp.store.tables import processes_table, runs_table

log = logging.getLogger("asyncapp.store")
T = TypeVar("T")

#: Ids per ``IN (...)`` list.
CHUNK = 500


class SqlStore(SqlJobs):
    """The store on one :class:`Database` (see :mod:`asyncapp.store.interface`); its job
    half is :class:`~asyncapp.store.sql_jobs.SqlJobs`."""

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
                        "process %s stopped heartbeating; its runs in progress end as unknown",
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

    # -- housekeeping -----------------------------------------------------------------

    async def prune_answers(self, before: float) -> int:
        return await self.db.write(lambda conn: requests.prune(conn, before))

    async def prune_changes(self, *, older_than: datetime, batch: int) -> int:
        return await self.db.write(
            lambda conn: self.rows.prune_changes(conn, older_than=older_than, batch=batch)
        )

    async def prune_runs(
        self,
        *,
        older_than: datetime | None,
        keep_per_job: int,
        batch: int,
        job_ids: list[str] | None = None,
    ) -> int:
        return await self.db.write(
            lambda conn: prune(
                conn,
                older_than=older_than,
                keep_per_job=keep_per_job,
                batch=batch,
                job_ids=job_ids,
            )
        )
