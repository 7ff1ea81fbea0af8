"""Writing how runs ended: in batches, off the loop, retried while the database is away.

:class:`Recorder` queues the end of each run (and each failed attempt before a
retry) and writes them in one transaction per batch, on the database's write
thread.  Results wait up to :attr:`Recorder.LINGER` for company: at 200 runs a
second that is one transaction per 20 ms instead of one per run, so claims,
which share the write thread, rarely wait behind a result.  A claim also takes
the queued results into its own transaction (:meth:`Recorder.take`), so a run
that ended never counts as in progress against the next claim.

Ending a run is conditional (:func:`asyncapp.store.claims.end_runs`): a run another
process already declared ``interrupted`` (this one was presumed dead, or a
newer run cancelled it) keeps that verdict, and the late end is logged.
Ending a run of a ``buffer_one`` job starts the run waiting for it, here.

The queue cannot grow without bound while the database is away: no run starts
without a claim, and no claim is made while the database is away, so it holds
at most the runs that were in progress when the outage began.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy.engine import Connection

from asyncapp.errors import DatabaseUnavailable
from asyncapp.model.run import Run
from asyncapp.store.claims import end_runs, record_attempts
from asyncapp.store.database import Database

log = logging.getLogger("asyncapp.run")


class Recorder:
    """Writes the ends of runs in batches, off the loop; retries while the database is away."""

    RETRY_SECONDS = (0.5, 1.0, 2.0, 5.0)
    #: Seconds results wait for company before they are written.
    LINGER = 0.02
    #: Results that are written at once, without lingering.
    BATCH = 200

    def __init__(
        self,
        db: Database,
        process_id: str,
        on_started: Callable[[list[Run]], None] = lambda runs: None,
    ) -> None:
        self.db = db
        self.process_id = process_id
        #: Called on the loop with the waiting runs this process must now start.
        self.on_started = on_started
        self._pending: list[Run] = []
        self._writing: list[Run] = []
        self._attempts: list[dict[str, Any]] = []
        self._buffered: set[str] = set()
        #: Transactions holding results taken from the queue, not yet committed or failed.
        self._in_flight = 0
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

    def queued(self) -> list[str]:
        """Ids of the runs whose end is queued, not yet handed to a transaction."""
        return [run.id for run in self._pending]

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

    def finish(self, run: Run, *, buffered: bool = False) -> None:
        """Queue the end of ``run``; ``buffered``: its job may have a run waiting for it."""
        self._pending.append(run)
        if buffered:
            self._buffered.add(run.job_id)
        self._idle.clear()
        self._wake.set()

    def attempt(self, run: Run) -> None:
        """Queue an attempt of ``run`` that failed and will be retried."""
        self._attempts.append(
            {
                "run_id": run.id,
                "attempt": run.attempt,
                "started_at": run.started_at,
                "ended_at": run.ended_at,
                "status": run.status,
                "error_type": run.error_type,
                "error_message": run.error_message,
                "node": run.node,
                "process_id": run.process_id,
            }
        )
        self._idle.clear()
        self._wake.set()

    def take(self) -> Callable[[Connection], list[Run]]:
        """Hand the queued results to a claim's transaction; returns the writer to call in it.

        Call :meth:`taken` with the writer's result once committed, or
        :meth:`untake` if the transaction failed.
        """
        batch, self._pending = self._pending, []
        attempts, self._attempts = self._attempts, []
        buffered, self._buffered = self._buffered, set()
        self._in_flight += 1
        return functools.partial(self._write, batch=batch, attempts=attempts, buffered=buffered)

    def taken(self, started: list[Run]) -> None:
        self._in_flight -= 1
        if started:
            self.on_started(started)
        self._idle_if_done()

    def untake(self, write: Callable[[Connection], list[Run]]) -> None:
        assert isinstance(write, functools.partial)
        self._in_flight -= 1
        self._pending[:0] = write.keywords["batch"]
        self._attempts[:0] = write.keywords["attempts"]
        self._buffered |= write.keywords["buffered"]
        if self._pending or self._attempts:
            self._idle.clear()
            self._wake.set()

    async def flush(self, wait: float | None = None) -> bool:
        """Wait until everything queued is written, at most ``wait`` s; True if it was.

        Results a claim took into its transaction count until that transaction ends.
        """
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
            if not self._pending and not self._attempts:
                # Results riding in a claim's transaction are written when it commits.
                self._idle_if_done()
                continue
            write = self.take()
            self._writing = write.keywords["batch"]  # type: ignore[attr-defined]
            try:
                started = await self.db.write(write)
            except DatabaseUnavailable:
                self.failing = True
                self._writing = []
                self.untake(write)
                delay = self.RETRY_SECONDS[min(failures, len(self.RETRY_SECONDS) - 1)]
                failures += 1
                await asyncio.sleep(delay)
                self._wake.set()
                continue
            except Exception:
                log.exception("writing %d run results failed; they are dropped", len(self._writing))
                started = []
            failures = 0
            self.failing = False
            self._writing = []
            self.taken(started)
            if self._pending or self._attempts:
                self._wake.set()

    def _idle_if_done(self) -> None:
        if not self._pending and not self._attempts and not self._writing and not self._in_flight:
            self._urgent = False
            self._idle.set()

    def _write(
        self,
        conn: Connection,
        *,
        batch: list[Run],
        attempts: list[dict[str, Any]],
        buffered: set[str],
    ) -> list[Run]:
        if attempts:
            record_attempts(conn, self.db, attempts, self.process_id)
        if not batch and not buffered:
            return []
        recorded, started = end_runs(conn, self.db, batch, self.process_id, buffered=buffered)
        if recorded < len(batch):
            log.warning(
                "%d of %d runs ended after another process had ended them (this process was "
                "presumed dead, or a newer run cancelled them); the history keeps that verdict",
                len(batch) - recorded,
                len(batch),
            )
        return started
