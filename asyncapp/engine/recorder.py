"""Writing how runs ended: in batches, off the loop, retried while the database is away.

:class:`Recorder` queues the end of each run (and each failed attempt before a
retry) and writes them in one transaction per batch, on the database's write
thread.  Results wait up to :attr:`Recorder.LINGER` for company: at 200 runs a
second that is one transaction per 20 ms instead of one per run, so claims,
which share the write thread, rarely wait behind a result.  A claim also takes
the queued results into its own transaction (:meth:`Recorder.take`), so a run
that ended never counts as in progress against the next claim.

Ending a run is conditional (:func:`asyncapp.store.claims.end_runs`): a run a
newer run cancelled (``interrupted``), or that another process took over to run
again, keeps that verdict, and the late end is logged; a run a reaper ended as
``unknown`` while this process was presumed dead takes the real end.  So
``asyncapp_runs_total`` counts a run here once its end is committed, and only
if this end is the one the history keeps (the process that ended it counted it
then; a run first counted ``unknown`` by a reaper counts again with its end).

If this process dies before its queued ends are written, the others end those
runs as ``unknown``, never as ``interrupted``: the end may have been a success.
The queue is written within :attr:`Recorder.LINGER` while the database answers,
so that window is a few milliseconds; while the database refuses writes it
lasts the outage.
Ending a run of a ``buffer_one`` job starts the run waiting for it, here.

The queue cannot grow without bound while the database is away: no run starts
without a claim, and no claim is made while the database is away, so it holds
at most the runs that were in progress when the outage began.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from asyncapp import metrics
from asyncapp.errors import DatabaseUnavailable
from asyncapp.model.run import Run
from asyncapp.store.interface import Ends, Recorded, Store

log = logging.getLogger("asyncapp.run")


class Recorder:
    """Writes the ends of runs in batches, off the loop; retries while the database is away."""

    RETRY_SECONDS = (0.5, 1.0, 2.0, 5.0)
    #: Seconds results wait for company before they are written.
    LINGER = 0.02
    #: Results that are written at once, without lingering.
    BATCH = 200

    def __init__(self, store: Store, process_id: str) -> None:
        self.store = store
        self.process_id = process_id
        #: Waiting runs that the ends this recorder wrote handed to this process to start
        #: (``buffer_one``); the dispatcher takes them from here.
        self.promoted: asyncio.Queue[list[Run]] = asyncio.Queue()
        self._pending: list[Run] = []
        self._writing: list[Run] = []
        self._attempts: list[dict[str, Any]] = []
        #: The job function of each queued run, for ``asyncapp_runs_total``.
        self._funcs: dict[str, str] = {}
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

    def finish(self, run: Run, *, func: str | None = None, buffered: bool = False) -> None:
        """Queue the end of ``run``; ``buffered``: its job may have a run waiting for it.

        With ``func`` (the job's function), the end counts in ``asyncapp_runs_total``
        once written, unless another process had ended the run first.
        """
        self._pending.append(run)
        if func is not None:
            self._funcs[run.id] = func
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

    def take(self) -> Ends:
        """Hand the queued results to a transaction (a claim's, or the recorder's own).

        Write them in the transaction, then call :meth:`taken` once it committed
        or :meth:`untake` if it failed.
        """
        batch = Ends(self._pending, self._attempts, self._buffered)
        self._pending, self._attempts, self._buffered = [], [], set()
        self._in_flight += 1
        return batch

    def taken(self, batch: Ends, recorded: Recorded) -> None:
        """``batch``'s transaction committed: count the ends the history kept."""
        self._in_flight -= 1
        kept = {run.id for run in recorded.kept}
        for run in batch.runs:
            func = self._funcs.pop(run.id, None)
            if func is not None and run.id in kept:
                metrics.RUNS.labels(func, run.status).inc()
        self._idle_if_done()

    def untake(self, batch: Ends) -> None:
        """``batch``'s transaction failed: its results go back to the front of the queue."""
        self._in_flight -= 1
        self._pending[:0] = batch.runs
        self._attempts[:0] = batch.attempts
        self._buffered |= batch.buffered
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
            batch = self.take()
            self._writing = batch.runs
            try:
                recorded = await self.store.record_ends(batch, self.process_id)
            except DatabaseUnavailable:
                self.failing = True
                self._writing = []
                self.untake(batch)
                delay = self.RETRY_SECONDS[min(failures, len(self.RETRY_SECONDS) - 1)]
                failures += 1
                await asyncio.sleep(delay)
                self._wake.set()
                continue
            except Exception:
                log.exception("writing %d run results failed; they are dropped", len(self._writing))
                recorded = Recorded()
            failures = 0
            self.failing = False
            self._writing = []
            self.taken(batch, recorded)
            if recorded.started:
                self.promoted.put_nowait(recorded.started)
            if self._pending or self._attempts:
                self._wake.set()

    def _idle_if_done(self) -> None:
        if not self._pending and not self._attempts and not self._writing and not self._in_flight:
            self._urgent = False
            self._idle.set()
