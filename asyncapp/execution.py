"""Every run of every job passes through here.

:class:`JobExecutor` is the APScheduler executor: it turns each submission into
an asyncio task running :meth:`Runner.run_job` on the server loop.  The runner
records the run in the ledger, enforces the misfire grace time, gives the job
its context (:func:`current_run` and, through ``run_context``, Flask's app
context), runs ``async def`` jobs on the loop and ``def`` jobs in a thread, and
records the outcome.  On shutdown :meth:`JobExecutor.drain` lets running jobs
finish for a grace period, then cancels the rest, recorded as interrupted
(APScheduler's AsyncIOExecutor cancels at once; DESIGN.md Fact 4).

This module does not import Flask; the app context arrives as a callable.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from apscheduler.events import (
    EVENT_JOB_ERROR,
    EVENT_JOB_EXECUTED,
    EVENT_JOB_MISSED,
    JobExecutionEvent,
)
from apscheduler.executors.base import BaseExecutor
from apscheduler.job import Job

from .errors import JobBusy, NotRunning
from .ledger import Ledger, Run, utcnow
from .settings import Settings

log = logging.getLogger("asyncapp.run")


@dataclass(frozen=True)
class RunContext:
    """What a running job may know about itself; see :func:`current_run`."""

    job_id: str
    run_id: str
    scheduled_for: datetime
    node: str
    settings: Settings
    logger: logging.LoggerAdapter[logging.Logger]


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
    """Runs one submission of a job: one or more scheduled times."""

    def __init__(
        self,
        ledger: Ledger,
        settings: Settings,
        run_context: Callable[[], AbstractContextManager[Any]] = contextlib.nullcontext,
    ) -> None:
        self.ledger = ledger
        self.settings = settings
        self.run_context = run_context

    async def run_job(self, job: Job, run_times: list[datetime]) -> list[JobExecutionEvent]:
        events = []
        for run_time in run_times:
            events.append(await self.run_once(job, run_time))
        return events

    async def run_once(
        self, job: Job, scheduled_for: datetime, run_id: str | None = None
    ) -> JobExecutionEvent:
        run = Run(job_id=job.id, scheduled_for=scheduled_for, node=self.settings.node_name)
        if run_id is not None:
            run = replace(run, id=run_id)
        alias = job._jobstore_alias
        late = utcnow() - scheduled_for
        if job.misfire_grace_time is not None and late > timedelta(seconds=job.misfire_grace_time):
            self.ledger.record(run.finish("missed"))
            log.warning("job %s run %s missed: %.1fs late", job.id, run.id, late.total_seconds())
            return JobExecutionEvent(EVENT_JOB_MISSED, job.id, alias, scheduled_for)

        run = replace(run, started_at=utcnow())
        self.ledger.record(run)
        logger = logging.LoggerAdapter(log, {"job_id": job.id, "run_id": run.id, "node": run.node})
        token = _current_run.set(
            RunContext(job.id, run.id, scheduled_for, run.node, self.settings, logger)
        )
        log.debug("job %s run %s started (scheduled %s)", job.id, run.id, scheduled_for.isoformat())
        try:
            with self.run_context():
                if inspect.iscoroutinefunction(job.func):
                    result = await job.func(*job.args, **job.kwargs)
                else:
                    result = await asyncio.to_thread(job.func, *job.args, **job.kwargs)
        except asyncio.CancelledError:
            self.ledger.record(run.finish("interrupted"))
            log.warning("job %s run %s interrupted", job.id, run.id)
            raise
        except Exception as exc:
            self.ledger.record(run.finish("error", exc))
            log.exception("job %s run %s failed", job.id, run.id)
            return JobExecutionEvent(EVENT_JOB_ERROR, job.id, alias, scheduled_for, exception=exc)
        finally:
            _current_run.reset(token)
        run = run.finish("success")
        self.ledger.record(run)
        log.info(
            "job %s run %s succeeded in %.3fs (%.3fs late)",
            job.id,
            run.id,
            (run.ended_at - run.started_at).total_seconds(),  # type: ignore[operator]
            (run.started_at - scheduled_for).total_seconds(),  # type: ignore[operator]
        )
        return JobExecutionEvent(EVENT_JOB_EXECUTED, job.id, alias, scheduled_for, retval=result)


class JobExecutor(BaseExecutor):
    """APScheduler executor running every job through :class:`Runner` on the loop."""

    def __init__(self, runner: Runner) -> None:
        super().__init__()
        self.runner = runner
        self._tasks: set[asyncio.Task[list[JobExecutionEvent]]] = set()

    def start(self, scheduler: Any, alias: str) -> None:
        super().start(scheduler, alias)
        self._loop: asyncio.AbstractEventLoop = scheduler._eventloop

    @property
    def running(self) -> int:
        """Runs in progress."""
        return len(self._tasks)

    def _do_submit_job(self, job: Job, run_times: list[datetime]) -> None:
        self._track(job.id, self.runner.run_job(job, run_times))

    def run_now(self, job: Job) -> Run:
        """Start a run of ``job`` now, outside its schedule; returns it as started.

        :raises JobBusy: if ``max_instances`` runs of it are in progress.
        """
        run = Run(job_id=job.id, scheduled_for=utcnow(), node=self.runner.settings.node_name)

        async def once() -> list[JobExecutionEvent]:
            return [await self.runner.run_once(job, run.scheduled_for, run.id)]

        with self._lock:
            if self._instances[job.id] >= job.max_instances:
                raise JobBusy(job.id, job.max_instances)
            self._instances[job.id] += 1
        self._track(job.id, once())
        return run

    def _track(self, job_id: str, coro: Any) -> None:
        task = self._loop.create_task(coro, name=f"asyncapp-job-{job_id}")
        self._tasks.add(task)
        task.add_done_callback(lambda t: self._finished(job_id, t))

    def _finished(self, job_id: str, task: asyncio.Task[list[JobExecutionEvent]]) -> None:
        self._tasks.discard(task)
        if task.cancelled() or task.exception() is not None:
            # The runner records and logs its own failures; only the count is left.
            with self._lock:
                self._instances[job_id] -= 1
                if self._instances[job_id] <= 0:
                    del self._instances[job_id]
            return
        self._run_job_success(job_id, task.result())

    async def drain(self, grace: float) -> int:
        """Wait up to ``grace`` seconds for running jobs, then cancel the rest.

        Returns how many were cancelled; returns once they have recorded it.
        """
        if not self._tasks:
            return 0
        _, pending = await asyncio.wait(set(self._tasks), timeout=grace)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
        return len(pending)

    def shutdown(self, wait: bool = True) -> None:
        for task in self._tasks:
            task.cancel()
