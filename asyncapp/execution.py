"""The one place where runs are claimed and started.

:class:`Dispatcher` receives due jobs from the scheduler (and "run now"
requests from the service), claims them in batches through
:func:`asyncapp.claims.claim` on the database's write thread, and starts a
task for each run it wins.  While one claim transaction is being written,
whatever falls due queues for the next, so claims due together share a
transaction (one commit for a batch instead of one per job: on this
machine's PostgreSQL, 2.75k single-key claims/s against 27k keys/s in
batches of 100).

Spreading runs over processes: every process fires every job, and the claim
decides; but a process that claims a batch of 2000 due jobs first would win
them all.  So each process claims at once only the jobs it *prefers* (a hash
of the job id over the live processes, from the heartbeat table) and the
others after :data:`SPREAD_DELAY`; if the preferred process is alive it has
claimed them by then and the late claims lose, cheaply; if it is dead, the
others take over after that delay.  The delay affects who runs a time, never
whether it runs once.

:class:`Runner` runs one claimed run: the job's context (:func:`current_run`
and, through ``run_context``, Flask's app context), ``async def`` jobs on the
loop and ``def`` jobs in a thread, and the outcome, ended through the
:class:`~asyncapp.ledger.Recorder`.  On shutdown :meth:`Dispatcher.drain`
lets running jobs finish for a grace period, then cancels the rest, recorded
as interrupted (APScheduler's AsyncIOExecutor cancels at once).

This module does not import Flask; the app context arrives as a callable.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import logging
import random
import zlib
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Connection

from .claims import Due, Outcome, Reasons, claim
from .constants import ERROR, INTERRUPTED, SUCCESS
from .db import Database
from .errors import DatabaseUnavailable, JobBusy, JobNotFound, NotRunning
from .jobs import JobDef
from .ledger import Recorder, Run, utcnow
from .settings import Settings

log = logging.getLogger("asyncapp.run")

#: Seconds a process waits before claiming jobs another live process prefers.
SPREAD_DELAY = 0.25


@dataclass(frozen=True)
class RunContext:
    """What a running job may know about itself; see :func:`current_run`."""

    job_id: str
    run_id: str
    scheduled_for: datetime
    node: str
    settings: Settings
    logger: logging.LoggerAdapter[logging.Logger]
    #: Stable across retries and processes: use it as an idempotency key.
    key: str = ""
    attempt: int = 1


_current_run: contextvars.ContextVar[RunContext] = contextvars.ContextVar("asyncapp_run")


def current_run() -> RunContext:
    """The run being executed: ids, scheduled time, settings and a logger tagged with them.

    :raises NotRunning: outside a job run.
    """
    try:
        return _current_run.get()
    except LookupError:
        raise NotRunning("current_run()") from None


class Runner:
    """Runs one claimed run of a job and records how it ended."""

    def __init__(
        self,
        recorder: Recorder,
        settings: Settings,
        run_context: Callable[[], AbstractContextManager[Any]] = contextlib.nullcontext,
    ) -> None:
        self.recorder = recorder
        self.settings = settings
        self.run_context = run_context

    async def run(self, run: Run, job: JobDef, func: Callable[..., Any]) -> Run:
        """Run ``job``'s body for ``run``; returns the ended run (also queued for recording)."""
        jitter = job.trigger.get("jitter")
        if jitter:
            await asyncio.sleep(random.uniform(0, float(jitter)))  # noqa: S311 - not for security
        run = replace(run, started_at=utcnow())
        tags = {"job_id": job.id, "run_id": run.id, "node": run.node}
        logger = logging.LoggerAdapter(log, tags)
        token = _current_run.set(
            RunContext(
                job.id,
                run.id,
                run.scheduled_for,
                run.node,
                self.settings,
                logger,
                key=run.key,
                attempt=run.attempt,
            )
        )
        log.debug("job %s run %s started (scheduled %s)", job.id, run.id, run.scheduled_for)
        try:
            with self.run_context():
                if inspect.iscoroutinefunction(func):
                    await func(*job.args, **job.kwargs)
                else:
                    await asyncio.to_thread(func, *job.args, **job.kwargs)
        except asyncio.CancelledError:
            ended = run.finish(INTERRUPTED)
            self.recorder.finish(ended)
            log.warning("job %s run %s interrupted", job.id, run.id)
            raise
        except Exception as exc:
            ended = run.finish(ERROR, exc)
            self.recorder.finish(ended)
            log.exception("job %s run %s failed", job.id, run.id)
            return ended
        finally:
            _current_run.reset(token)
        ended = run.finish(SUCCESS)
        self.recorder.finish(ended)
        log.info(
            "job %s run %s succeeded in %.3fs (%.3fs late)",
            job.id,
            run.id,
            (ended.ended_at - run.started_at).total_seconds(),  # type: ignore[operator]
            (run.started_at - run.scheduled_for).total_seconds(),  # type: ignore[operator]
        )
        return ended


@dataclass(eq=False)
class Submission:
    """A :class:`Due` with what is needed to start its runs and to undo it."""

    due: Due
    job: JobDef
    func: Callable[..., Any]
    #: Set for "run now": resolved with the started run, or the reason it was refused.
    answer: asyncio.Future[Run] | None = None


class Hooks:
    """What the dispatcher tells its owner; the runtime overrides these."""

    def stale(self, job_ids: set[str]) -> None:
        """These jobs changed in the database: reload them."""

    def halted(self, submissions: list[Submission]) -> None:
        """The scheduler-wide state is not running; these were not claimed."""

    def database_down(self, submissions: list[Submission]) -> None:
        """The claim could not be written; these were not claimed."""


class Dispatcher:
    """Claims due jobs in batches and starts the runs it wins."""

    def __init__(
        self,
        db: Database,
        runner: Runner,
        *,
        node: str,
        process_id: str,
        reasons: Reasons,
        hooks: Hooks | None = None,
    ) -> None:
        self.db = db
        self.runner = runner
        self.node = node
        self.process_id = process_id
        self.reasons = reasons
        self.hooks = hooks or Hooks()
        #: (my index, live processes): which jobs this process claims first.
        self.rank = (0, 1)
        self._pending: list[Submission] = []
        self._wake = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._claimer: asyncio.Task[None] | None = None
        self._closing = False
        self._runs: dict[str, asyncio.Task[None]] = {}

    @property
    def running(self) -> int:
        """Runs in progress in this process."""
        return len(self._runs)

    def start(self) -> None:
        self._claimer = asyncio.create_task(self._claim_forever(), name="asyncapp-claims")

    async def stop(self) -> None:
        """Stop claiming once the claim being written (if any) is done and its runs started.

        A claim is never cancelled halfway: its transaction may already be
        committing on the database thread, and runs it won must start (and then
        be drained) rather than be left claimed by no one.
        """
        if self._claimer is not None:
            self._closing = True
            self._wake.set()
            await asyncio.gather(self._claimer, return_exceptions=True)
            self._claimer = None
        pending, self._pending = self._pending, []
        for submission in pending:
            if submission.answer is not None and not submission.answer.done():
                submission.answer.set_exception(NotRunning("the job executor"))

    def prefers(self, job_id: str) -> bool:
        index, count = self.rank
        return count <= 1 or zlib.crc32(job_id.encode()) % count == index

    def submit(self, submission: Submission) -> None:
        """Queue a scheduled claim (from the scheduler, on the loop)."""
        if self.prefers(submission.job.id):
            self._queue(submission)
        else:
            self._loop.call_later(SPREAD_DELAY, self._queue, submission)

    async def run_now(self, job: JobDef, func: Callable[..., Any]) -> Run:
        """Claim a run of ``job`` at the current time and start it; returns it as started.

        :raises JobBusy: if ``max_instances`` runs of it are in progress cluster-wide.
        :raises JobNotFound: if the job is gone.
        :raises DatabaseUnavailable: if the claim could not be written.
        """
        due = Due(job.id, job.version, [utcnow()], job.next_run_time, manual=True)
        answer: asyncio.Future[Run] = self._loop.create_future()
        self._queue(Submission(due, job, func, answer))
        return await answer

    def _queue(self, submission: Submission) -> None:
        self._pending.append(submission)
        self._wake.set()

    async def _claim_forever(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._closing:
                return
            batch, self._pending = self._pending, []
            if batch:
                await self._claim(batch)

    async def _claim(self, batch: list[Submission]) -> None:
        dues = [submission.due for submission in batch]
        recorder = self.runner.recorder
        ended = recorder.take()

        def transaction(conn: Connection) -> list[Outcome]:
            recorder.write(conn, ended)
            return claim(
                self.db,
                conn,
                dues,
                node=self.node,
                process_id=self.process_id,
                reasons=self.reasons,
            )

        try:
            outcomes = await self.db.write(transaction)
        except DatabaseUnavailable as exc:
            recorder.untake(ended)
            self._refuse(batch, exc)
            self.hooks.database_down([s for s in batch if s.answer is None])
            return
        except Exception as exc:
            recorder.untake(ended)
            log.exception("claiming %d due jobs failed", len(batch))
            self._refuse(batch, exc)
            self.hooks.database_down([s for s in batch if s.answer is None])
            return
        recorder.taken(ended)
        stale: set[str] = set()
        halted: list[Submission] = []
        for submission, outcome in zip(batch, outcomes, strict=True):
            self._settle(submission, outcome)
            if outcome.stale:
                stale.add(submission.job.id)
            if outcome.halted:
                halted.append(submission)
        if stale:
            self.hooks.stale(stale)
        if halted:
            self.hooks.halted(halted)

    def _settle(self, submission: Submission, outcome: Outcome) -> None:
        if outcome.won:
            self.start_runs(outcome.won, submission.job, submission.func)
        for run in outcome.missed:
            log.warning(
                "job %s missed %s (run %s): %s",
                run.job_id,
                run.scheduled_for.isoformat(),
                run.id,
                run.reason,
            )
        answer = submission.answer
        if answer is None or answer.done():
            return
        if outcome.won:
            answer.set_result(outcome.won[0])
        elif outcome.busy:
            answer.set_exception(JobBusy(submission.job.id, submission.job.max_instances))
        else:
            answer.set_exception(JobNotFound(submission.job.id))

    def _refuse(self, batch: Iterable[Submission], exc: Exception) -> None:
        for submission in batch:
            if submission.answer is not None and not submission.answer.done():
                error = exc if isinstance(exc, DatabaseUnavailable) else DatabaseUnavailable()
                submission.answer.set_exception(error)

    def start_runs(self, runs: list[Run], job: JobDef, func: Callable[..., Any]) -> None:
        """Start one task running ``runs`` of ``job`` (claimed by this process) in order."""
        task = self._loop.create_task(
            self._run_in_order(runs, job, func), name=f"asyncapp-run-{job.id}"
        )
        key = runs[0].id
        self._runs[key] = task
        task.add_done_callback(lambda _: self._runs.pop(key, None))

    async def _run_in_order(self, runs: list[Run], job: JobDef, func: Callable[..., Any]) -> None:
        for index, run in enumerate(runs):
            try:
                await self.runner.run(run, job, func)
            except asyncio.CancelledError:
                for left in runs[index + 1 :]:  # claimed, never started
                    self.runner.recorder.finish(left.finish(INTERRUPTED))
                raise

    async def drain(self, grace: float) -> int:
        """Wait up to ``grace`` seconds for running jobs, then cancel the rest.

        Returns how many were cancelled; returns once they have recorded it.
        """
        tasks = set(self._runs.values())
        if not tasks:
            return 0
        _, pending = await asyncio.wait(tasks, timeout=grace)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
        return len(pending)
