"""The sync Python API: :class:`SyncJobs`, :class:`~asyncapp.faces.python.jobs.Jobs`
without ``await`` (where the call runs: see the package)."""

from __future__ import annotations

import asyncio
import builtins
import functools
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar

from flask import Flask, has_request_context
from greenlet import getcurrent

from asyncapp.constants import DEFAULT_UPCOMING
from asyncapp.faces.python.jobs import Jobs
from asyncapp.faces.python.values import Job, JobRun

T = TypeVar("T")


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
