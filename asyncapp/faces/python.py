"""The Python API for jobs: what views, jobs and scripts call, typed.

Async first (:data:`jobs`, a :class:`Jobs`), and the same calls without
``await`` for sync views, plain ``def`` jobs and scripts (:data:`sync_jobs`, a
:class:`SyncJobs`)::

    from asyncapp import jobs, sync_jobs

    job = await jobs.add(poll, "interval", minutes=5, id="poll", args=["https://example.org"])
    await jobs.pause("poll", note="upstream down")
    sync_jobs.resume("poll")                      # in a sync view or a script

It is a face over the one :class:`~asyncapp.service.jobs.JobService`, as the
HTTP API, the CLI and the dashboard are: input goes through the API's
validation (:mod:`asyncapp.service.validation`), errors are the exceptions of
:mod:`asyncapp.errors` (``InvalidJob`` with per-field ``errors``,
``JobNotFound``, ``JobExists``, ``UnknownFunction``...), every change is
committed before the call returns and recorded in the job's change history
with ``source: "code"``.

Which app: the one given (``Jobs(app)``), else ``flask.current_app`` (views and
jobs run in the app context).  Where the work happens:

- in a process whose runtime runs (under Hypercorn), on its service, on its
  loop: changes reach the scheduler at once; ``run_now`` starts a run and
  returns it without waiting;
- elsewhere (a script, a shell), on a service over the database alone, opened
  for the call; every running server applies the change within a second, as
  it does a CLI command's.  ``run_now`` there runs the job in this process
  (claimed like any run) and waits for it, as ``flask jobs run`` does.

The sync form, on a thread without an event loop, hands the call to the
server loop when the runtime runs (a sync view's or a ``def`` job's thread),
else runs it with :func:`asyncio.run`.  In an async view, called synchronously
in the sync parts of an async view's request (hooks and helpers Flask calls
in the request's greenlet), it suspends the greenlet (``Flask.async_to_sync``,
overridden by asyncapp's adapter).  In an ``async def`` body, on the loop's
own thread, waiting would block the loop: it raises ``RuntimeError`` saying to
await :data:`jobs` instead.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, Protocol, TypeVar, cast

from flask import Flask, current_app, has_request_context
from greenlet import getcurrent

from asyncapp.constants import DEFAULT_UPCOMING
from asyncapp.errors import JobNotFound
from asyncapp.model.change import Actor
from asyncapp.model.tasks import reference
from asyncapp.runtime import Runtime
from asyncapp.service.jobs import JobService
from asyncapp.service.schemas import ALL_TRIGGER_FIELDS
from asyncapp.service.validation import parse_job_create, parse_job_update, parse_pause

T = TypeVar("T")

#: Who the change history says made changes through this API.
CODE = Actor("code")
#: Seconds ``run_now`` waits for a run it runs itself (outside a server).
RUN_WAIT = 3600.0


class Extension(Protocol):
    """What this face needs of the extension attached to the app."""

    runtime: Runtime
    loop: asyncio.AbstractEventLoop | None

    def offline_service(self, *, writes: bool = True) -> AbstractAsyncContextManager[JobService]:
        """A job service over the database alone."""
        ...

    def cli_runtime(self) -> AbstractAsyncContextManager[Runtime]:
        """A runtime that runs a job now but fires nothing on schedule."""
        ...


@dataclass(frozen=True)
class Job:
    """A job as stored, the HTTP API's job JSON as a value.

    ``trigger`` is ``{"type": "interval", "minutes": 5, ...}``, the fields set;
    ``next_run_time`` is aware (the trigger's time zone), None when paused or over.
    """

    id: str
    name: str
    func: str
    trigger: dict[str, Any]
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    next_run_time: datetime | None = None
    paused: bool = False
    note: str | None = None
    broken: bool = False
    misfire_grace_time: int | None = None
    max_instances: int = 1
    coalesce: bool = True
    overlap: str = "skip"
    timeout: float | None = None
    retries: int = 0
    version: int = 1

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> Job:
        trigger = {"type": data["trigger"]}
        trigger.update(
            (key, value)
            for key, value in data.items()
            if key in ALL_TRIGGER_FIELDS and value is not None
        )
        when = data.get("next_run_time")
        return cls(
            id=data["id"],
            name=data["name"],
            func=data["func"],
            trigger=trigger,
            args=tuple(data.get("args") or ()),
            kwargs=dict(data.get("kwargs") or {}),
            next_run_time=None if when is None else datetime.fromisoformat(when),
            paused=bool(data.get("paused")),
            note=data.get("note"),
            broken=bool(data.get("broken")),
            misfire_grace_time=data.get("misfire_grace_time"),
            max_instances=data.get("max_instances", 1),
            coalesce=data.get("coalesce", True),
            overlap=data.get("overlap", "skip"),
            timeout=data.get("timeout"),
            retries=data.get("retries", 0),
            version=data.get("version", 1),
        )


@dataclass(frozen=True)
class JobRun:
    """One run of a job, or the record of a scheduled time that was not run (``missed``).

    Times are aware UTC; ``status`` is one of ``asyncapp.constants.RUN_STATUSES``.
    """

    id: str
    job_id: str
    status: str
    scheduled_for: datetime
    node: str
    started_at: datetime | None = None
    ended_at: datetime | None = None
    error_type: str | None = None
    error_message: str | None = None
    attempt: int = 1
    reason: str | None = None

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> JobRun:
        def moment(name: str) -> datetime | None:
            value = data.get(name)
            return None if value is None else datetime.fromisoformat(value)

        scheduled = moment("scheduled_for")
        assert scheduled is not None
        return cls(
            id=data["id"],
            job_id=data["job_id"],
            status=data["status"],
            scheduled_for=scheduled,
            node=data["node"],
            started_at=moment("started_at"),
            ended_at=moment("ended_at"),
            error_type=data.get("error_type"),
            error_message=data.get("error_message"),
            attempt=data.get("attempt", 1),
            reason=data.get("reason"),
        )


def _json(value: Any) -> Any:
    """Python values as the API's JSON takes them: tuples as lists, dates as ISO 8601."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, tuple | list):
        return [_json(item) for item in value]
    if isinstance(value, Mapping):
        return {key: _json(item) for key, item in value.items()}
    return value


def func_ref(func: Callable[..., Any] | str) -> str:
    """``"module:name"`` of a job function given as the function or its reference."""
    return func if isinstance(func, str) else reference(func)


class Jobs:
    """The jobs of one app (``Jobs(app)``) or of the current one (``Jobs()``), async."""

    def __init__(self, app: Flask | None = None) -> None:
        self._app = app

    def app(self) -> Flask:
        """The app this acts on. :raises RuntimeError: outside an app context, unbound."""
        if self._app is not None:
            return self._app
        return cast(Flask, current_app._get_current_object())  # type: ignore[attr-defined]

    def _ext(self) -> Extension:
        ext = self.app().extensions.get("asyncapp")
        if ext is None:
            raise RuntimeError("asyncapp is not attached to this Flask app; call AsyncApp(app)")
        return cast(Extension, ext)

    @contextlib.asynccontextmanager
    async def _service(self, *, writes: bool = True) -> AsyncIterator[JobService]:
        ext = self._ext()
        if ext.runtime.started and ext.loop is asyncio.get_running_loop():
            yield ext.runtime.service
            return
        async with ext.offline_service(writes=writes) as service:
            yield service

    async def add(
        self,
        func: Callable[..., Any] | str,
        trigger: str = "date",
        *,
        id: str | None = None,
        name: str | None = None,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        paused: bool = False,
        **fields: Any,
    ) -> Job:
        """Schedule a new job of a registered ``@task`` function (the function or its
        ``"module:name"``) on ``trigger`` (``"date"``, ``"interval"``, ``"cron"``).

        ``fields`` are the trigger's fields (``minutes=5``, ``hour="*/2"``,
        ``timezone="Europe/Paris"``, ``run_date=datetime(...)``) and the job's
        options (``timeout``, ``retries``, ``overlap``, ``max_instances``,
        ``misfire_grace_time``, ``coalesce``, ``rerun_interrupted``), as in
        ``POST /scheduler/jobs``.  Without ``id``, one is made.

        :raises UnknownFunction: ``func`` is not a registered ``@task``.
        :raises InvalidJob: a bad field, with per-field ``errors``.
        :raises JobExists: ``id`` is taken.
        """
        body: dict[str, Any] = {
            "func": func_ref(func),
            "trigger": trigger,
            "args": _json(list(args)),
            "kwargs": _json(dict(kwargs or {})),
            **{key: _json(value) for key, value in fields.items()},
        }
        if id is not None:
            body["id"] = id
        if name is not None:
            body["name"] = name
        if paused:
            body["paused"] = True
        spec = parse_job_create(body)
        async with self._service() as service:
            return Job.from_api(await service.add_job(spec, CODE))

    async def get(self, job_id: str) -> Job:
        """:raises JobNotFound:"""
        async with self._service(writes=False) as service:
            return Job.from_api(await service.get_job(job_id))

    async def find(self, job_id: str) -> Job | None:
        """The job, or None when there is none with this id."""
        try:
            return await self.get(job_id)
        except JobNotFound:
            return None

    async def list(self) -> builtins.list[Job]:
        """Every job, soonest next run first (paused last)."""
        async with self._service(writes=False) as service:
            return [Job.from_api(job) for job in await service.list_jobs()]

    async def modify(
        self,
        job_id: str,
        *,
        func: Callable[..., Any] | str | None = None,
        trigger: str | None = None,
        **fields: Any,
    ) -> Job:
        """Change a job: ``args``, ``kwargs``, ``name``, options; with ``trigger``, the
        whole trigger (its fields given alongside), recomputing the next run.

        :raises JobNotFound, InvalidJob, UnknownFunction:
        """
        body = {key: _json(value) for key, value in fields.items()}
        if func is not None:
            body["func"] = func_ref(func)
        if trigger is not None:
            body["trigger"] = trigger
        changes = parse_job_update(job_id, body)
        async with self._service() as service:
            return Job.from_api(await service.update_job(job_id, changes, CODE))

    async def pause(self, job_id: str, note: str | None = None) -> Job:
        """Stop firing the job until resumed; ``note`` says why (shown with the job).

        :raises JobNotFound, InvalidJob:
        """
        checked = parse_pause({} if note is None else {"note": note})
        async with self._service() as service:
            return Job.from_api(await service.pause_job(job_id, CODE, checked))

    async def resume(self, job_id: str) -> Job:
        """Fire the job again from its next time after now. :raises JobNotFound:"""
        async with self._service() as service:
            return Job.from_api(await service.resume_job(job_id, CODE))

    async def remove(self, job_id: str) -> None:
        """Remove the job; its run and change history stay. :raises JobNotFound:"""
        async with self._service() as service:
            await service.delete_job(job_id, CODE)

    async def run_now(self, job_id: str) -> JobRun:
        """Run the job once now, outside its schedule, recorded in its run history.

        In a server: returns the run as started, without waiting.  Elsewhere: runs
        it in this process and returns it ended.

        :raises JobNotFound, InvalidJob, JobBusy:
        """
        ext = self._ext()
        if ext.runtime.started and ext.loop is asyncio.get_running_loop():
            return JobRun.from_api(await ext.runtime.service.run_job(job_id, CODE))
        async with ext.cli_runtime() as runtime:
            started = await runtime.service.run_job(job_id, CODE)
            await runtime.dispatcher.drain(RUN_WAIT)
            await runtime.recorder.flush()
            page = await runtime.service.list_runs(job_id, None, 50, 0)
        ended = next((run for run in page["runs"] if run["id"] == started["id"]), started)
        return JobRun.from_api(ended)

    async def upcoming(
        self, job_id: str, count: int = DEFAULT_UPCOMING, after: datetime | None = None
    ) -> builtins.list[datetime]:
        """The next ``count`` (1-100) fire times strictly after ``after`` (aware; default
        now), in the trigger's time zone, as the scheduler computes them.

        :raises JobNotFound, InvalidJob:
        """
        async with self._service(writes=False) as service:
            times = await service.upcoming(job_id, count, after)
        return [datetime.fromisoformat(moment) for moment in times["times"]]

    async def runs(
        self,
        job_id: str | None = None,
        *,
        status: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> builtins.list[JobRun]:
        """Runs and missed records of one job (or of all), newest scheduled time first.

        :raises InvalidJob: for a bad status, limit (1-1000) or offset.
        """
        async with self._service(writes=False) as service:
            page = await service.list_runs(job_id, status, limit, offset)
        return [JobRun.from_api(run) for run in page["runs"]]

    async def scheduler(self) -> dict[str, Any]:
        """The scheduler as ``GET /scheduler`` shows it: ``state`` (``running``,
        ``paused``, ``stopped``), ``running``, job counts and the live processes."""
        async with self._service(writes=False) as service:
            return await service.scheduler_info()

    async def pause_scheduler(self) -> None:
        """Stop firing every job, in every process, until resumed; runs go on."""
        async with self._service() as service:
            await service.pause_scheduler(CODE)

    async def resume_scheduler(self) -> None:
        """Undo :meth:`pause_scheduler` (and :meth:`stop_scheduler`)."""
        async with self._service() as service:
            await service.resume_scheduler(CODE)

    async def stop_scheduler(self) -> None:
        """Stop firing, in every process, until resumed (state ``stopped``); runs go on
        and the processes stay up."""
        async with self._service() as service:
            await service.shutdown_scheduler(CODE)


class SyncJobs:
    """:class:`Jobs` without ``await``: for sync views, ``def`` jobs and scripts."""

    def __init__(self, app: Flask | None = None) -> None:
        self._app = app

    def _call(self, method: Callable[[Jobs], Callable[..., Awaitable[T]]], *a: Any, **k: Any) -> T:
        bound = Jobs(self._app or Jobs().app())
        call = functools.partial(method(bound), *a, **k)
        loop = bound._ext().loop
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is not None:
            if running is loop and has_request_context() and getcurrent().parent is not None:
                # In the greenlet of a request for an async view (asyncapp's adapter):
                # its sync parts (hooks, helpers Flask calls) may suspend the request.
                async def in_request() -> T:
                    return await call()

                return bound.app().async_to_sync(in_request)()  # type: ignore[no-any-return]
            raise RuntimeError(
                "asyncapp.sync_jobs was called on the thread of a running event loop (an "
                "async view or job?), where waiting would block the loop; await asyncapp.jobs "
                "instead"
            )
        if loop is not None and not loop.is_closed():
            return asyncio.run_coroutine_threadsafe(_awaited(call), loop).result()
        return asyncio.run(_awaited(call))

    def add(self, func: Callable[..., Any] | str, trigger: str = "date", **fields: Any) -> Job:
        """:meth:`Jobs.add`."""
        return self._call(lambda jobs: jobs.add, func, trigger, **fields)

    def get(self, job_id: str) -> Job:
        """:meth:`Jobs.get`."""
        return self._call(lambda jobs: jobs.get, job_id)

    def find(self, job_id: str) -> Job | None:
        """:meth:`Jobs.find`."""
        return self._call(lambda jobs: jobs.find, job_id)

    def list(self) -> builtins.list[Job]:
        """:meth:`Jobs.list`."""
        return self._call(lambda jobs: jobs.list)

    def modify(self, job_id: str, **fields: Any) -> Job:
        """:meth:`Jobs.modify`."""
        return self._call(lambda jobs: jobs.modify, job_id, **fields)

    def pause(self, job_id: str, note: str | None = None) -> Job:
        """:meth:`Jobs.pause`."""
        return self._call(lambda jobs: jobs.pause, job_id, note)

    def resume(self, job_id: str) -> Job:
        """:meth:`Jobs.resume`."""
        return self._call(lambda jobs: jobs.resume, job_id)

    def remove(self, job_id: str) -> None:
        """:meth:`Jobs.remove`."""
        self._call(lambda jobs: jobs.remove, job_id)

    def run_now(self, job_id: str) -> JobRun:
        """:meth:`Jobs.run_now`."""
        return self._call(lambda jobs: jobs.run_now, job_id)

    def upcoming(
        self, job_id: str, count: int = DEFAULT_UPCOMING, after: datetime | None = None
    ) -> builtins.list[datetime]:
        """:meth:`Jobs.upcoming`."""
        return self._call(lambda jobs: jobs.upcoming, job_id, count, after)

    def runs(self, job_id: str | None = None, **query: Any) -> builtins.list[JobRun]:
        """:meth:`Jobs.runs`."""
        return self._call(lambda jobs: jobs.runs, job_id, **query)

    def scheduler(self) -> dict[str, Any]:
        """:meth:`Jobs.scheduler`."""
        return self._call(lambda jobs: jobs.scheduler)

    def pause_scheduler(self) -> None:
        """:meth:`Jobs.pause_scheduler`."""
        self._call(lambda jobs: jobs.pause_scheduler)

    def resume_scheduler(self) -> None:
        """:meth:`Jobs.resume_scheduler`."""
        self._call(lambda jobs: jobs.resume_scheduler)

    def stop_scheduler(self) -> None:
        """:meth:`Jobs.stop_scheduler`."""
        self._call(lambda jobs: jobs.stop_scheduler)


async def _awaited(call: Callable[[], Awaitable[T]]) -> T:
    return await call()


#: The jobs of the current app, async: ``await jobs.add(...)``.
jobs = Jobs()
#: The jobs of the current app, sync: ``sync_jobs.add(...)``.
sync_jobs = SyncJobs()
