"""The one place where runs are claimed and started.

:class:`Dispatcher` receives due jobs from the scheduler (and "run now"
requests from the service), claims them in batches through
:func:`asyncapp.store.claims.claim` on the database's write thread, and starts a
task for each run it wins.  While one claim transaction is being written,
whatever falls due queues for the next, so claims due together share a
transaction (one commit for a batch instead of one per job: on this
machine's PostgreSQL, 2.75k single-key claims/s against 27k keys/s in
batches of 100).

A job row that another transaction holds (a process frozen inside its claim,
an operator's open transaction) delays that job only: the claim skips it
(``SKIP LOCKED``) and tries it again after :data:`RETRY_LOCKED`; a claim
whose lock wait timed out is retried the same way, not taken for an outage.

Spreading runs over processes: each process submits only the due times of
its own share of the jobs (:mod:`asyncapp.engine.cache`) and those the sweep
took from an owner that fell behind (:mod:`asyncapp.engine.sweep`); every
submission is claimed at once.  Who submits a time decides who is likely to
run it, never whether it runs once: that is the claim's.

Claims are made ``ASYNCAPP_CLAIM_LEAD`` (0.1 s) ahead of the due time (the
scheduler plans that far ahead), so a run's start does not wait for its
claim's commit: a run won ahead of its time waits in its task until the time,
then starts unless its job was removed or paused, or the scheduler paused,
in the meantime (:meth:`Hooks.not_starting`; the run is then recorded missed
with that reason).  A time claimed ahead while its job's limit of runs is in
progress is not decided then (the run may end before the time comes): the
claim defers it and it is claimed again at its time.

The dispatcher starts each run it wins through the :class:`~asyncapp.engine.runner.Runner`,
at most ``ASYNCAPP_MAX_RUNNING`` at once in this process (the others wait
their turn, which shows as start lateness).  It also carries out what a claim
decided for the job's overlap policy: a ``buffer_one`` run waits (started by
whichever process ends the run in progress), a ``cancel_other`` claim cancels
the runs it ended here before it starts the new one.  Runs the database says
another process ended are stopped here (:meth:`Dispatcher.abandon`).  On
shutdown :meth:`Dispatcher.drain` lets running jobs finish for a grace
period, then cancels the rest, recorded as interrupted (APScheduler's
AsyncIOExecutor cancels at once).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

from asyncapp import metrics
from asyncapp.constants import INTERRUPTED, MISSED, MISSED_REASONS, RUNNING
from asyncapp.engine.runner import Runner
from asyncapp.errors import DatabaseUnavailable, JobBusy, JobNotFound, NotRunning
from asyncapp.model.job import JobDef
from asyncapp.model.run import Run, utcnow
from asyncapp.store.interface import Due, Outcome, Reasons, Store

log = logging.getLogger("asyncapp.run")

#: Runs started per turn of the loop after a claim (see ``Dispatcher._claim``).
WAVE = 32
#: Jobs whose latest definition the dispatcher keeps for runs it takes over after the
#: job left the cache (removed, or a one-shot job that fired): a bound, not a cache size
#: that matters, since a job still in the cache is found there.
LATEST_KEPT = 1000
#: Seconds before a claim is tried again when its job's row (or SQLite's write
#: lock) was held by another transaction.
RETRY_LOCKED = 0.5


@dataclass(eq=False)
class Submission:
    """A :class:`Due` with what is needed to start its runs and to undo it."""

    due: Due
    job: JobDef
    func: Callable[..., Any]
    #: Set for "run now": resolved with the started run, or the reason it was refused.
    answer: asyncio.Future[Run] | None = None
    #: Taken by the sweep from another share (its owner fell behind or is gone).
    swept: bool = False


def merged(batch: list[Submission]) -> list[Submission]:
    """``batch`` with the scheduled submissions of one job and version made one, in
    place of the first.

    Times planned one by one while the claims waited (a stall: a held lock, a
    database restart) are then claimed together, so coalescing runs the latest of
    them and records the others ``coalesced``, as it does for times planned at once,
    instead of running the oldest and recording the rest ``overlap``.
    """
    first: dict[tuple[str, int], Submission] = {}
    kept: list[Submission] = []
    for submission in batch:
        due = submission.due
        into = None if due.manual or due.folded else first.get((due.job_id, due.version))
        if into is None:
            if not due.manual and not due.folded:
                first[due.job_id, due.version] = submission
            kept.append(submission)
            continue
        latest = max(into.due, due, key=lambda d: d.times[-1])
        into.due = replace(
            into.due,
            times=sorted({*into.due.times, *due.times}),
            next_run_time=latest.next_run_time,
            final=into.due.final or due.final,
            ahead=into.due.ahead or due.ahead,
        )
    return kept


class Hooks:
    """What the dispatcher tells its owner; the runtime overrides these."""

    def job_for(self, job_id: str) -> tuple[JobDef, Callable[..., Any]] | None:
        """The job and function to start a run of ``job_id`` with, if this process can."""
        return None

    def stale(self, job_ids: set[str]) -> None:
        """These jobs changed in the database: reload them."""

    def halted(self, submissions: list[Submission]) -> None:
        """The scheduler-wide state is not running; these were not claimed."""

    def database_down(self, submissions: list[Submission]) -> None:
        """The claim could not be written; these were not claimed."""

    def not_starting(self, job: JobDef) -> str | None:
        """Why a run of ``job`` claimed ahead of its time must not start now (a missed
        reason: the job was removed or paused, or the scheduler paused, meanwhile)."""
        return None


class Dispatcher:
    """Claims due jobs in batches and starts the runs it wins."""

    def __init__(
        self,
        store: Store,
        runner: Runner,
        *,
        node: str,
        process_id: str,
        reasons: Reasons,
        max_running: int,
        hooks: Hooks | None = None,
    ) -> None:
        self.store = store
        self.runner = runner
        self.node = node
        self.process_id = process_id
        self.reasons = reasons
        self.hooks = hooks or Hooks()
        self._pending: list[Submission] = []
        #: The jobs of the claim being written.
        self._claiming: set[str] = set()
        self._wake = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._claimer: asyncio.Task[None] | None = None
        self._closing = False
        #: The task running each run id of this process.
        self._runs: dict[str, asyncio.Task[None]] = {}
        #: The run each of those tasks is running now.
        self._current: dict[asyncio.Task[Any], Run] = {}
        #: The job and function each job's latest run here started with (for a run to
        #: take over after its job left the cache); the :data:`LATEST_KEPT` latest jobs.
        self._latest: OrderedDict[str, tuple[JobDef, Callable[..., Any]]] = OrderedDict()
        #: Jobs with runs or missed records claimed here since :meth:`touched`.
        self._touched: set[str] = set()
        self._slots = asyncio.Semaphore(max_running)
        self._promoter: asyncio.Task[None] | None = None

    @property
    def running(self) -> int:
        """Runs in progress (or waiting for a slot) in this process."""
        return len(set(self._runs.values()))

    @property
    def backlog(self) -> int:
        """Submissions waiting for the next claim transaction."""
        return len(self._pending)

    def run_ids(self) -> list[str]:
        """The runs this process runs now."""
        return list(self._runs)

    def start(self) -> None:
        self._claimer = asyncio.create_task(self._claim_forever(), name="asyncapp-claims")
        self._promoter = asyncio.create_task(self._promote_forever(), name="asyncapp-promoted")

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
        if self._promoter is not None:
            self._promoter.cancel()
            await asyncio.gather(self._promoter, return_exceptions=True)
            self._promoter = None
        pending, self._pending = self._pending, []
        for submission in pending:
            if submission.answer is not None and not submission.answer.done():
                submission.answer.set_exception(NotRunning("the job executor"))

    def touched(self) -> set[str]:
        """The jobs with runs or missed records claimed here since the last call (whose
        history may have grown past ``ASYNCAPP_HISTORY_PER_JOB``)."""
        touched, self._touched = self._touched, set()
        return touched

    def submit(self, submission: Submission) -> None:
        """Queue a scheduled claim (from the scheduler or the sweep, on the loop)."""
        due = submission.due
        attempted = len(due.times) + (due.folded is not None)
        metrics.CLAIMS_ATTEMPTED.labels("sweep" if submission.swept else "share").inc(attempted)
        self._queue(submission)

    async def run_now(
        self, job: JobDef, func: Callable[..., Any], *, run_id: str | None = None
    ) -> Run:
        """Claim a run of ``job`` at the current time and start it; returns it as started.

        With ``run_id``, a run of that id claimed before (a retried request) is
        returned as it is now, and nothing starts.

        :raises JobBusy: if ``max_instances`` runs of it are in progress cluster-wide.
        :raises JobNotFound: if the job is gone.
        :raises DatabaseUnavailable: if the claim could not be written.
        """
        due = Due(
            job.id,
            job.version,
            [utcnow()],
            job.next_run_time,
            overlap=job.overlap,
            manual=True,
            run_id=run_id,
        )
        if self._closing:
            raise NotRunning("the job executor")
        answer: asyncio.Future[Run] = self._loop.create_future()
        self._queue(Submission(due, job, func, answer))
        return await answer

    def _queue(self, submission: Submission) -> None:
        if submission.due.job_id in self._claiming:
            submission.due.final = True  # see Due.final
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
                await self._claim_together(batch)

    async def _claim_together(self, batch: list[Submission]) -> None:
        batch = merged(batch)
        dues = [submission.due for submission in batch]
        self._claiming = {due.job_id for due in dues}
        try:
            await self._claim(batch, dues)
        finally:
            self._claiming = set()

    async def _claim(self, batch: list[Submission], dues: list[Due]) -> None:
        recorder = self.runner.recorder
        results = recorder.take()
        try:
            # The queued results first: a run that ended never counts against the claim.
            recorded, outcomes = await self.store.claim(
                dues, results, node=self.node, process_id=self.process_id, reasons=self.reasons
            )
        except DatabaseUnavailable as exc:
            recorder.untake(results)
            self._refuse(batch, exc)
            scheduled = [s for s in batch if s.answer is None]
            if exc.busy:
                # A lock wait timed out: the database answers; try these again soon.
                self._retry_later(scheduled)
            else:
                self.hooks.database_down(scheduled)
            return
        except Exception as exc:
            recorder.untake(results)
            log.exception("claiming %d due jobs failed", len(batch))
            self._refuse(batch, exc)
            self.hooks.database_down([s for s in batch if s.answer is None])
            return
        recorder.taken(results, recorded)
        if recorded.started:
            self.start_promoted(recorded.started)
        if outcomes is None:  # presumed dead: fenced until it rejoins
            log.warning("claimed nothing: this process is presumed dead until it rejoins")
            self._refuse(batch, DatabaseUnavailable("presumed dead", busy=True))
            self._retry_later([s for s in batch if s.answer is None])
            return
        stale: set[str] = set()
        halted: list[Submission] = []
        starts: list[tuple[list[Run], JobDef, Callable[..., Any]]] = []
        held: list[Submission] = []
        for submission, outcome in zip(batch, outcomes, strict=True):
            if outcome.locked:
                held.append(submission)
                continue
            if outcome.deferred:
                self._at_its_time(submission)
                continue
            self._settle(submission, outcome, starts)
            if outcome.stale:
                stale.add(submission.job.id)
            if outcome.halted:
                halted.append(submission)
        if held:
            self._retry_later(held)
        if stale:
            self.hooks.stale(stale)
        if halted:
            self.hooks.halted(halted)
        for index, (runs, job, func) in enumerate(starts):
            if index and not index % WAVE:
                # Each run's first steps (context, request building) cost the loop
                # about half a millisecond before its first I/O.  Started all at
                # once, 2000 runs would send their first request only after all
                # 2000 had taken that step; in waves, the loop sends each wave's
                # requests before it starts the next.
                await asyncio.sleep(0)
            self.start_runs(runs, job, func)

    def _settle(
        self,
        submission: Submission,
        outcome: Outcome,
        starts: list[tuple[list[Run], JobDef, Callable[..., Any]]],
    ) -> None:
        due = submission.due
        if outcome.won or outcome.missed or outcome.waiting:
            self._touched.add(due.job_id)
        lost = len(due.times) + (due.folded is not None) - len(outcome.won) - len(outcome.missed)
        if not due.manual and not outcome.stale and not outcome.halted:
            metrics.CLAIMS_LOST.inc(max(0, lost - len(outcome.waiting)))
        if outcome.cancelled:  # ended by this claim, wherever they ran
            metrics.RUNS.labels(submission.job.func, INTERRUPTED).inc(len(outcome.cancelled))
        if outcome.won:
            victims = [run_id for run_id, _ in outcome.cancelled if run_id in self._runs]
            if victims:
                self._loop.create_task(
                    self._after(victims, outcome.won, submission.job, submission.func)
                )
            else:
                starts.append((outcome.won, submission.job, submission.func))
        for run in outcome.waiting:
            log.info(
                "job %s run %s (%s) waits for the run in progress (overlap buffer_one)",
                run.job_id,
                run.id,
                run.scheduled_for.isoformat(),
            )
        for run in outcome.missed:
            metrics.MISSED.labels(submission.job.func, run.reason or "").inc()
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
        elif outcome.replayed is not None:
            replayed = outcome.replayed
            if (
                replayed.status == RUNNING
                and replayed.process_id == self.process_id
                and replayed.id not in self._runs
            ):
                # Claimed here by a transaction whose answer was lost: it never started.
                log.warning(
                    "job %s run %s: claimed earlier without starting (a lost answer); starting it",
                    replayed.job_id,
                    replayed.id,
                )
                self.start_runs([replayed], submission.job, submission.func)
            answer.set_result(replayed)
        elif outcome.busy:
            answer.set_exception(JobBusy(submission.job.id, submission.job.max_instances))
        else:
            answer.set_exception(JobNotFound(submission.job.id))

    def _at_its_time(self, submission: Submission) -> None:
        """Claim ``submission`` again when its last time is due (it was claimed ahead of
        its time while a run of its job was in progress)."""
        delay = (submission.due.times[-1] - utcnow()).total_seconds()
        self._loop.call_later(max(0.0, delay), self._queue, submission)

    def _retry_later(self, submissions: list[Submission]) -> None:
        """Claim ``submissions`` again after :data:`RETRY_LOCKED`: their rows were held."""
        for submission in submissions:
            self._loop.call_later(RETRY_LOCKED, self._queue, submission)

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
        for run in runs:
            self._runs[run.id] = task
        self._latest[job.id] = job, func
        self._latest.move_to_end(job.id)
        if len(self._latest) > LATEST_KEPT:
            self._latest.popitem(last=False)
        task.add_done_callback(lambda _: self._forget(runs))

    async def _promote_forever(self) -> None:
        """Start the waiting runs that the recorder's own writes handed to this process."""
        promoted = self.runner.recorder.promoted
        while True:
            self.start_promoted(await promoted.get())

    def start_promoted(self, runs: list[Run]) -> None:
        """Start runs that this process took over (a waiting run, a re-run)."""
        for run in runs:
            # The job as cached now; else as the ended run ran it (a finished job is
            # gone from the cache).
            found = self.hooks.job_for(run.job_id) or self._latest.get(run.job_id)
            if found is None:
                log.error(
                    "job %s run %s cannot be started here; it stays unended", run.job_id, run.id
                )
                continue
            self.start_runs([run], *found)

    def fence(self, process_id: str) -> None:
        """This process was presumed dead: abandon every run it has, claim as ``process_id``.

        The others ended its runs (``interrupted``) and may run them again; their
        bodies here are cancelled, and their ends will not be recorded.
        """
        run_ids = self.run_ids()
        if run_ids:
            log.error(
                "abandoning %d runs claimed before this process was presumed dead: %s",
                len(run_ids),
                ", ".join(run_ids[:20]),
            )
        self.process_id = process_id
        self.abandon(run_ids)

    def abandon(self, run_ids: list[str]) -> None:
        """Stop runs that another process ended (cancelled, or took over), recording nothing."""
        for run_id in run_ids:
            task = self._runs.get(run_id)
            if task is not None and not task.done():
                self.runner.abandon(run_id)
                task.cancel()

    async def _after(
        self, victims: list[str], runs: list[Run], job: JobDef, func: Callable[..., Any]
    ) -> None:
        """Cancel the runs a ``cancel_other`` claim ended here, then start the new one."""
        tasks = {self._runs[run_id] for run_id in victims if run_id in self._runs}
        self.abandon(victims)
        if tasks:
            await asyncio.wait(tasks)
        self.start_runs(runs, job, func)

    def _forget(self, runs: list[Run]) -> None:
        for run in runs:
            self._runs.pop(run.id, None)
            self.runner.forget(run.id)

    async def _run_in_order(self, runs: list[Run], job: JobDef, func: Callable[..., Any]) -> None:
        task = asyncio.current_task()
        for index, run in enumerate(runs):
            started = False
            try:
                if index == 0 and (reason := await self._its_time(run, job)) is not None:
                    self._not_started(runs, job, reason)
                    return
                async with self._slots:
                    if task is not None:
                        self._current[task] = run
                    started = True
                    await self.runner.run(run, job, func)
                self._runs.pop(run.id, None)  # ended here: nothing left to abandon
            except asyncio.CancelledError:
                # The runner records a run it started; claimed runs it never got to,
                # this one if it was still waiting for a slot, are recorded here.
                for left in runs[index if not started else index + 1 :]:
                    self.runner.recorder.finish(left.finish(INTERRUPTED), func=job.func)
                raise
            finally:
                if task is not None:
                    self._current.pop(task, None)

    async def _its_time(self, run: Run, job: JobDef) -> str | None:
        """Wait for the time of ``run`` if it was claimed ahead of it (the claim lead);
        then the reason it must not start, if one arose meanwhile."""
        ahead = (run.scheduled_for - utcnow()).total_seconds()
        if ahead <= 0:
            return None
        await asyncio.sleep(ahead)
        return self.hooks.not_starting(job)

    def _not_started(self, runs: list[Run], job: JobDef, reason: str) -> None:
        """Record ``runs`` (claimed ahead of their time) missed for ``reason``."""
        for run in runs:
            log.warning(
                "job %s run %s (%s), claimed ahead of its time, does not start: %s",
                run.job_id,
                run.id,
                run.scheduled_for.isoformat(),
                reason,
            )
            metrics.MISSED.labels(job.func, reason).inc()
            self._runs.pop(run.id, None)
            self.runner.recorder.finish(
                run.evolve(
                    status=MISSED,
                    started_at=None,
                    ended_at=utcnow(),
                    reason=reason,
                    error_message=MISSED_REASONS[reason],
                )
            )

    def run_of(self, task: asyncio.Task[Any] | None) -> Run | None:
        """The run ``task`` is running (read by the watchdog's thread: a dict look-up)."""
        return None if task is None else self._current.get(task)

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
