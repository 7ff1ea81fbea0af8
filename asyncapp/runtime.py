"""What lives on the server loop: database, shared client, scheduler; start and stop.

:class:`Runtime` is started by the ASGI lifespan (never at import time, so the
debug reloader cannot start two schedulers; DESIGN.md Fact 3) and owns its
resources on an :class:`~contextlib.AsyncExitStack`, closed in reverse order:
stop firing, drain running jobs, stop the scheduler, flush writes, close the
client, close the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, AsyncExitStack
from typing import Any

import httpx

from . import http
from .db import Database, Writer
from .errors import NotRunning, SettingsError
from .execution import JobExecutor, Runner
from .ledger import Ledger
from .scheduler import Scheduler, build_scheduler
from .settings import Settings
from .store import JobStore
from .tasks import Registry, Task, registry
from .triggers import build_trigger

log = logging.getLogger("asyncapp.runtime")


class Runtime:
    """The running parts of one app. ``fire=False`` loads jobs but never fires them (CLI)."""

    def __init__(
        self,
        settings: Settings,
        *,
        tasks: Registry = registry,
        run_context: Callable[[], AbstractContextManager[Any]] = contextlib.nullcontext,
        fire: bool = True,
    ) -> None:
        self.settings = settings
        self.tasks = tasks
        self.fire = fire
        self._run_context = run_context
        self._stack: AsyncExitStack | None = None
        self._db: Database | None = None
        self._writer: Writer | None = None
        self._store: JobStore | None = None
        self._scheduler: Scheduler | None = None
        self._executor: JobExecutor | None = None
        self._ledger: Ledger | None = None
        self._http: httpx.AsyncClient | None = None
        self._grace = settings.shutdown_grace

    # -- accessors: each raises NotRunning before start / after stop --------

    @property
    def started(self) -> bool:
        return self._stack is not None

    @property
    def db(self) -> Database:
        return self._need(self._db, "the database")

    @property
    def writer(self) -> Writer:
        return self._need(self._writer, "the database writer")

    @property
    def store(self) -> JobStore:
        return self._need(self._store, "the job store")

    @property
    def scheduler(self) -> Scheduler:
        return self._need(self._scheduler, "the scheduler")

    @property
    def executor(self) -> JobExecutor:
        return self._need(self._executor, "the job executor")

    @property
    def ledger(self) -> Ledger:
        return self._need(self._ledger, "the run history")

    @property
    def http(self) -> httpx.AsyncClient:
        return self._need(self._http, "http_client()")

    def _need(self, value: Any, what: str) -> Any:
        if value is None or self._stack is None:
            raise NotRunning(what)
        return value

    # -- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        """Open everything and start the scheduler on the running loop.

        :raises SettingsError: if a job module cannot be imported or declares a bad job.
        :raises sqlalchemy.exc.SQLAlchemyError: if the database cannot be opened.
        """
        self._stack = stack = AsyncExitStack()
        try:
            await self._open(stack)
        except BaseException:
            self._stack = None
            await stack.aclose()
            raise
        log.info(
            "asyncapp started on %s: %d jobs, %d broken, scheduler %s",
            self.settings.node_name,
            len(self.scheduler.get_jobs()),
            len(self.store.broken),
            self.scheduler.state_name,
        )

    async def stop(self, grace: float | None = None) -> None:
        """Stop firing, let running jobs finish for ``grace`` seconds (default:
        ``settings.shutdown_grace``), cancel the rest, then close everything."""
        stack, self._stack = self._stack, None
        if stack is None:
            return
        self._grace = self.settings.shutdown_grace if grace is None else grace
        await stack.aclose()
        self._db = self._writer = self._store = self._scheduler = None
        self._executor = self._ledger = self._http = None

    async def _open(self, stack: AsyncExitStack) -> None:
        settings = self.settings
        self._db = db = Database(settings.database_url)
        stack.push_async_callback(db.close)
        await db.open()

        self._store = store = JobStore(db, self.tasks, settings.zone)
        self._writer = writer = Writer(db, after_batch=store.after_batch)
        store.writer = writer
        writer.start()
        stack.push_async_callback(writer.stop)
        self._ledger = Ledger(db, writer)

        self._http = client = http.open_client(settings)
        stack.push_async_callback(http.close_client, client)

        _import_job_modules(settings.job_modules)
        await store.prime()
        self._executor = JobExecutor(Runner(self._ledger, settings, self._job_context))
        self._scheduler = scheduler = build_scheduler(settings, store, self._executor)
        scheduler.start(paused=True)
        stack.push_async_callback(self._stop_scheduler)
        self._apply_code_schedules()
        await writer.flush()
        _freeze_startup_objects()
        if self.fire:
            scheduler.resume()
            sync = asyncio.create_task(self._sync_forever(), name="asyncapp-sync")
            stack.push_async_callback(_cancel, sync)

    async def _stop_scheduler(self) -> None:
        scheduler, executor = self._scheduler, self._executor
        if scheduler is None or executor is None:
            return
        if scheduler.running:
            scheduler.pause()
        cancelled = await executor.drain(self._grace)
        if cancelled:
            log.warning(
                "cancelled %d running jobs at shutdown (recorded as interrupted)", cancelled
            )
        if scheduler.running:
            scheduler.shutdown()

    @contextlib.contextmanager
    def _job_context(self) -> Iterator[None]:
        with self._run_context(), http.bind(self.http):
            yield

    async def _sync_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.sync_interval)
            try:
                await self.store.sync()
            except Exception:
                log.exception("checking the database for job changes failed")

    # -- jobs declared in code --------------------------------------------------

    def _apply_code_schedules(self) -> None:
        """Upsert ``@task(trigger)`` jobs, keeping runtime state unless the code changed.

        Only tasks of ``ASYNCAPP_JOB_MODULES`` (and their submodules) are scheduled:
        the registry is process-wide, and importing a module must not schedule its
        jobs in an app that did not ask for them.

        A job paused at runtime stays paused; a trigger, args or options changed in
        code replace the stored ones at this start.
        """
        scheduled = [
            task
            for task in self.tasks.scheduled()
            if _in_modules(task.func.__module__, self.settings.job_modules)
        ]
        _check_unique_ids(scheduled)
        for task in scheduled:
            schedule = task.schedule
            assert schedule is not None
            job = self.scheduler.get_job(schedule.job_id)
            if schedule.enabled is not None and not schedule.enabled(self.settings):
                if job is not None and schedule.job_id in self.store.declared:
                    self.scheduler.remove_job(schedule.job_id)
                continue
            declaration = schedule.declaration(task.ref)
            if job is not None and self.store.declared.get(job.id) == declaration:
                continue
            try:
                trigger = build_trigger(schedule.trigger, self.settings.zone)
            except ValueError as exc:
                raise SettingsError([f"@task {task.ref}: {exc}"]) from None
            self.store.declared[schedule.job_id] = declaration
            options = {
                "name": schedule.job_id,
                "misfire_grace_time": self.settings.misfire_grace_time,
                "coalesce": self.settings.coalesce,
                "max_instances": 1,
                **schedule.options,
            }
            if job is None:
                self.scheduler.add_job(
                    task.func,
                    trigger,
                    id=schedule.job_id,
                    args=schedule.args,
                    kwargs=dict(schedule.kwargs),
                    **options,
                )
                continue
            paused = job.next_run_time is None
            self.scheduler.modify_job(
                job.id, func=task.func, args=schedule.args, kwargs=dict(schedule.kwargs), **options
            )
            self.scheduler.reschedule_job(job.id, trigger=trigger)
            if paused:
                self.scheduler.pause_job(job.id)
            log.info("job %s: applied the schedule changed in code", job.id)


def _freeze_startup_objects() -> None:
    """Move everything alive after startup out of the garbage collector's sight.

    Flask, SQLAlchemy, pydantic and the loaded jobs make a large heap of
    long-lived objects, and every full collection walks all of it on the loop
    thread: measured under 32 concurrent requests, full collections were the
    event-loop lag (p99 54 ms, p99 6 ms after freezing).  Objects created from
    here on are collected as usual.
    """
    gc.collect()
    gc.freeze()


def _import_job_modules(names: list[str]) -> None:
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as exc:
            raise SettingsError(
                [f"ASYNCAPP_JOB_MODULES: cannot import {name!r}: {type(exc).__name__}: {exc}"]
            ) from exc


def _in_modules(module: str, names: list[str]) -> bool:
    return any(module == name or module.startswith(name + ".") for name in names)


def _check_unique_ids(scheduled: list[Task]) -> None:
    seen: dict[str, str] = {}
    for task in scheduled:
        assert task.schedule is not None
        other = seen.setdefault(task.schedule.job_id, task.ref)
        if other != task.ref:
            raise SettingsError(
                [f"@task {task.ref} and {other} both declare job id {task.schedule.job_id!r}"]
            )


async def _cancel(task: asyncio.Task[Any]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
