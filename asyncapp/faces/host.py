"""What the faces (API, CLI, dashboard) need from the app they are attached to.

The :class:`~asyncapp.app.AsyncApp` extension sits above the faces: it
registers them, and they reach it back through :class:`Host`, a protocol of
the few things they use, rather than by importing it; so imports point one
way.  :data:`STATUS` is the one table of our exceptions to HTTP statuses,
shared by the API's JSON errors and the dashboard's pages.
"""

from __future__ import annotations

import asyncio
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol, cast

from flask import Flask, current_app

from asyncapp.errors import (
    AsyncAppError,
    DatabaseUnavailable,
    InvalidJob,
    JobBusy,
    JobExists,
    JobNotFound,
    KeyReused,
    NotRunning,
    UnknownFunction,
)
from asyncapp.model.change import Actor
from asyncapp.runtime import Runtime
from asyncapp.service.jobs import JobService
from asyncapp.settings import Settings


class Host(Protocol):
    """The extension as the faces see it."""

    settings: Settings
    runtime: Runtime
    #: The loop the runtime runs on, while it runs.
    loop: asyncio.AbstractEventLoop | None

    def service(self) -> JobService:
        """The job service of the running app. :raises NotRunning: when not started."""
        ...

    def offline_service(self, *, writes: bool = True) -> AbstractAsyncContextManager[JobService]:
        """A job service over the database alone (CLI commands)."""
        ...

    def cli_runtime(self) -> AbstractAsyncContextManager[Runtime]:
        """A runtime that runs a job now but fires nothing on schedule."""
        ...


def host(app: Flask | None = None) -> Host:
    """The extension attached to ``app`` (default: the current Flask app).

    :raises RuntimeError: if asyncapp is not attached to it.
    """
    found = (app or current_app).extensions.get("asyncapp")
    if found is None:
        raise RuntimeError("asyncapp is not attached to this Flask app; call AsyncApp(app)")
    return cast(Host, found)


async def run_here(ext: Host, job_id: str, actor: Actor, wait: float) -> dict[str, Any]:
    """Run ``job_id`` once now in this process (a runtime that fires nothing), waiting
    up to ``wait`` seconds for it; returns the run as the history holds it then.

    What ``flask jobs run`` and the Python API's ``run_now`` outside a server do.
    """
    async with ext.cli_runtime() as runtime:
        started = await runtime.service.run_job(job_id, actor)
        await runtime.dispatcher.drain(wait)
        await runtime.recorder.flush()
        page = await runtime.service.list_runs(job_id, None, 50, 0)
    return next((run for run in page["runs"] if run["id"] == started["id"]), started)


#: Our exceptions to status codes: the one place where errors become statuses.
STATUS: list[tuple[type[AsyncAppError], int]] = [
    (InvalidJob, 422),
    (UnknownFunction, 422),
    (JobNotFound, 404),
    (JobExists, 409),
    (JobBusy, 409),
    (KeyReused, 422),
    (NotRunning, 503),
    (DatabaseUnavailable, 503),
]


def status_of(exc: AsyncAppError) -> int:
    """The HTTP status that answers ``exc`` (400 for an error not in :data:`STATUS`)."""
    return next((code for kind, code in STATUS if isinstance(exc, kind)), 400)
