"""One claimed run of a job, from its start to its recorded end.

:class:`Runner` gives the job its context (:func:`current_run`, the log tags,
and, through ``run_context``, Flask's app context), then runs attempts until
one succeeds or the job's retries are spent:

- ``async def`` jobs are awaited on the server loop; plain ``def`` jobs run in
  a bounded pool of threads of their own (``ASYNCAPP_JOB_THREADS``), never in
  the request threads;
- ``timeout`` cancels an attempt that takes longer, recorded as ``timeout``.
  A ``def`` job's thread cannot be cancelled: the attempt is recorded as timed
  out, and the thread runs on, holding its pool slot, until the function
  returns (it is logged);
- an attempt that fails (raises, or times out) is retried after an
  exponential backoff with "equal jitter": after attempt *n* the wait is
  ``c/2 + random(0, c/2)`` with ``c = min(ASYNCAPP_RETRY_BACKOFF * 2**(n-1),
  ASYNCAPP_RETRY_BACKOFF_MAX)``.  The random half keeps many jobs failing
  together from retrying in step; the fixed half makes each wait at least as
  long as the one before (full jitter would not).  Each failed attempt is kept
  under the run with its own start and end (the backoff wait is in neither);
  the run keeps its first attempt's start and ends with the last attempt's
  status;
- a job that raises is logged once, at the end, with its traceback, and the
  run records the error's type and message; nothing else is affected.

This module does not import Flask; the app context arrives as a callable.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import logging
import random
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from asyncapp import metrics
from asyncapp.constants import BUFFER_ONE, ERROR, INTERRUPTED, SUCCESS, TIMEOUT, RunStatus
from asyncapp.engine.recorder import Recorder
from asyncapp.errors import JobTimeout, NotRunning
from asyncapp.logs import escape, run_tags
from asyncapp.model.job import JobDef
from asyncapp.model.run import Run, utcnow
from asyncapp.settings import Settings

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
    #: ``<job id>@<scheduled time>``: the same for every attempt of this scheduled
    #: time, in every process; send it as an idempotency key.
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
    """Runs claimed runs and records how they ended."""

    def __init__(
        self,
        recorder: Recorder,
        settings: Settings,
        run_context: Callable[[], AbstractContextManager[Any]] = contextlib.nullcontext,
    ) -> None:
        self.recorder = recorder
        self.settings = settings
        self.run_context = run_context
        self.threads = ThreadPoolExecutor(
            max_workers=settings.job_threads, thread_name_prefix="asyncapp-job"
        )
        #: Runs another process ended (a newer run cancelled them, or this process was
        #: presumed dead): they are stopped here without recording anything.
        self.abandoned: set[str] = set()

    def abandon(self, run_id: str) -> None:
        """Another process ended ``run_id``: when its task is cancelled, record nothing."""
        self.abandoned.add(run_id)

    def forget(self, run_id: str) -> None:
        """``run_id``'s task is done here: nothing left to abandon."""
        self.abandoned.discard(run_id)

    def close(self) -> None:
        self.threads.shutdown(wait=False, cancel_futures=True)

    def backoff(self, attempt: int) -> float:
        """Seconds before retrying after failed ``attempt`` (1-based): equal jitter."""
        ceiling = min(
            self.settings.retry_backoff * 2 ** (attempt - 1), self.settings.retry_backoff_max
        )
        wait: float = ceiling / 2 + random.uniform(0, ceiling / 2)  # noqa: S311 - spreading
        return wait

    async def run(self, run: Run, job: JobDef, func: Callable[..., Any]) -> Run:
        """Run ``job``'s body for ``run`` until it succeeds or its retries are spent.

        Returns the ended run (also queued for recording).  Cancelled, it records
        the run as ``interrupted`` (unless another process already ended it) and
        re-raises.
        """
        jitter = job.trigger.get("jitter")
        if jitter:
            try:
                await asyncio.sleep(random.uniform(0, float(jitter)))  # noqa: S311 - spreading
            except asyncio.CancelledError:
                self._cancelled(run, job)
                raise
        first = run = run.evolve(started_at=utcnow())
        metrics.LATENESS.labels(job.func).observe(
            max(0.0, (run.started_at - run.scheduled_for).total_seconds())  # type: ignore[operator]
        )
        tags = {
            "job_id": job.id,
            "run_id": run.id,
            "scheduled_for": run.scheduled_for.isoformat(),
            "node": run.node,
        }
        tags_token = run_tags.set(tags)
        metrics.RUNNING.inc()
        try:
            while True:
                status, error = await self._attempt(run, job, func)
                if status == SUCCESS or run.attempt - first.attempt >= job.retries:
                    break
                failed = run.finish(status, error)
                self.recorder.attempt(failed)
                metrics.RETRIES.labels(job.func).inc()
                delay = self.backoff(run.attempt - first.attempt + 1)
                log.warning(
                    "job %s run %s attempt %d ended %s (%s); retrying in %.2f s",
                    job.id,
                    run.id,
                    run.attempt,
                    status,
                    _describe(error),
                    delay,
                )
                await asyncio.sleep(delay)
                # Each attempt has its own start; the run keeps its first (``first``).
                run = run.evolve(attempt=run.attempt + 1, started_at=utcnow())
        except asyncio.CancelledError:
            self._cancelled(run, job, first.started_at)
            raise
        finally:
            metrics.RUNNING.dec()
            run_tags.reset(tags_token)
        ended = run.finish(status, error).evolve(started_at=first.started_at)
        self.recorder.finish(ended, func=job.func, buffered=job.overlap == BUFFER_ONE)
        took = (ended.ended_at - first.started_at).total_seconds()  # type: ignore[operator]
        metrics.DURATION.labels(job.func).observe(took)
        _log_end(job, ended, took, error, tags)
        return ended

    def _cancelled(self, run: Run, job: JobDef, started_at: datetime | None = None) -> None:
        """Record ``run`` as interrupted (started at ``started_at``, its first attempt's
        start), unless another process ended it (abandoned)."""
        if run.id in self.abandoned:
            self.abandoned.discard(run.id)
            log.warning("job %s run %s was ended elsewhere; stopped it here", job.id, run.id)
            return
        interrupted = run.finish(INTERRUPTED)
        if started_at is not None:
            interrupted = interrupted.evolve(started_at=started_at)
        self.recorder.finish(interrupted, func=job.func, buffered=job.overlap == BUFFER_ONE)
        log.warning("job %s run %s interrupted", job.id, run.id)

    async def _attempt(
        self, run: Run, job: JobDef, func: Callable[..., Any]
    ) -> tuple[RunStatus, BaseException | None]:
        """One attempt: (status, error)."""
        logger = logging.LoggerAdapter(log, {"job_id": job.id, "run_id": run.id})
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
        deadline = asyncio.timeout(job.timeout)
        try:
            with self.run_context():
                async with deadline:
                    if inspect.iscoroutinefunction(func):
                        await func(*job.args, **job.kwargs)
                    else:
                        await self._in_thread(job, func)
        except TimeoutError as exc:
            if deadline.expired() and job.timeout is not None:
                return TIMEOUT, JobTimeout(job.timeout)
            return ERROR, exc
        except Exception as exc:
            return ERROR, exc
        finally:
            _current_run.reset(token)
        return SUCCESS, None

    async def _in_thread(self, job: JobDef, func: Callable[..., Any]) -> None:
        call = functools.partial(func, *job.args, **job.kwargs)
        context = contextvars.copy_context()
        future = asyncio.get_running_loop().run_in_executor(self.threads, context.run, call)
        try:
            await asyncio.shield(future)
        except asyncio.CancelledError:
            if not future.done():
                log.warning(
                    "job %s: its def function goes on in its thread until it returns "
                    "(threads cannot be cancelled); the run is recorded as ended",
                    job.id,
                )
            raise


def _describe(error: BaseException | None) -> str:
    if error is None:
        return "-"
    # The message is the job's: one line in any log handler (logs.escape).
    return escape(f"{type(error).__name__}: {str(error)[:200]}")


def _log_end(
    job: JobDef, ended: Run, took: float, error: BaseException | None, tags: dict[str, str]
) -> None:
    token = run_tags.set(tags)
    try:
        late = (ended.started_at - ended.scheduled_for).total_seconds()  # type: ignore[operator]
        if ended.status == SUCCESS:
            log.info("job %s run %s succeeded in %.3fs (%.3fs late)", job.id, ended.id, took, late)
        elif ended.status == TIMEOUT:
            log.error("job %s run %s timed out: %s", job.id, ended.id, _describe(error))
        else:
            log.error(
                "job %s run %s failed after %d attempt(s)",
                job.id,
                ended.id,
                ended.attempt,
                exc_info=error,
            )
    finally:
        run_tags.reset(token)
