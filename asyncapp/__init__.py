"""asyncapp: periodic I/O-bound async jobs inside a Flask app.

Flask served through asgiref under Hypercorn, with APScheduler's
AsyncIOScheduler on the server loop running ``async def`` jobs::

    from asyncapp import task, http_client

    @task("interval", minutes=5, id="poll")
    async def poll() -> None:
        await http_client().get("https://example.org/")

Steer jobs from code with ``await jobs.add(...)`` (``sync_jobs`` without
``await``).  Serve with ``hypercorn -c hypercorn.toml asyncapp.asgi:app``.
"""

from __future__ import annotations

from asyncapp.app import AsyncApp, create_app
from asyncapp.constants import VERSION
from asyncapp.engine.runner import RunContext, current_run
from asyncapp.errors import (
    AsyncAppError,
    InvalidJob,
    JobBusy,
    JobExists,
    JobNotFound,
    KeyReused,
    NotRunning,
    SettingsError,
    UnknownFunction,
)
from asyncapp.faces.python import Job, JobRun, Jobs, SyncJobs, jobs, sync_jobs
from asyncapp.http import aiohttp_session, http_client
from asyncapp.model.tasks import task
from asyncapp.settings import Settings

__version__ = VERSION

__all__ = [
    "AsyncApp",
    "AsyncAppError",
    "InvalidJob",
    "Job",
    "JobBusy",
    "JobExists",
    "JobNotFound",
    "JobRun",
    "Jobs",
    "KeyReused",
    "NotRunning",
    "RunContext",
    "Settings",
    "SettingsError",
    "SyncJobs",
    "UnknownFunction",
    "__version__",
    "aiohttp_session",
    "create_app",
    "current_run",
    "http_client",
    "jobs",
    "sync_jobs",
    "task",
]
