"""The async Python API: :class:`Jobs`, a face over the job service (see the package)."""

from __future__ import annotations

import asyncio
import builtins
import contextlib
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, cast

from flask import Flask, current_app

from asyncapp.constants import DEFAULT_UPCOMING
from asyncapp.errors import JobNotFound
from asyncapp.faces.host import Host, host, run_here
from asyncapp.faces.python.values import Job, JobRun, as_json, func_ref
from asyncapp.model.change import Actor
from asyncapp.service.jobs import JobService
from asyncapp.service.validation import parse_job_create, parse_job_update, parse_pause

#: Who the change history says made changes through this API.
CODE = Actor("code")
#: Seconds ``run_now`` waits for a run it runs itself (outside a server).
RUN_WAIT = 3600.0


class Jobs:
    """The jobs of one app (``Jobs(app)``) or of the current one (``Jobs()``), async."""

    def __init__(self, app: Flask | None = None) -> None:
        self._app = app

    def app(self) -> Flask:
        """The app this acts on. :raises RuntimeError: outside an app context, unbound."""
        if self._app is not None:
            return self._app
        return cast(Flask, current_app._get_current_object())  # type: ignore[attr-defined]

    def _ext(self) -> Host:
        return host(self.app())

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
            "args": as_json(list(args)),
            "kwargs": as_json(dict(kwargs or {})),
            **{key: as_json(value) for key, value in fields.items()},
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
        body = {key: as_json(value) for key, value in fields.items()}
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
        return JobRun.from_api(await run_here(ext, job_id, CODE, RUN_WAIT))

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
