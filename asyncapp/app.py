"""``create_app`` and the Flask extension that attaches asyncapp to any Flask app.

Teams with an app of their own write ``AsyncApp(app)`` (or ``ext.init_app(app)``)
and serve ``asyncapp.asgi.to_asgi(app)``; ``create_app`` does exactly that on a
fresh Flask app.  The extension reads settings (environment, overridden by
``ASYNCAPP_*`` keys of the Flask config), owns the :class:`Runtime`, adds
``/healthz`` and ``/readyz``, the management API, the ``/dashboard`` pages and
the ``flask jobs`` CLI.
Jobs run inside the app's application context, so ``flask.current_app`` works
in them as in views.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from flask import Blueprint, Flask, current_app, jsonify

from . import logs
from .api import init_api
from .cli import init_cli
from .cluster import CLI
from .dashboard import init_dashboard
from .errors import DatabaseUnavailable
from .runtime import Runtime, offline_service
from .service import JobService
from .settings import Settings, load_settings

log = logging.getLogger("asyncapp")

#: Endpoints that answer without a token: liveness and readiness probes.
OPEN_ENDPOINTS = frozenset({"asyncapp_health.healthz", "asyncapp_health.readyz"})
READY_TIMEOUT = 2.0


class AsyncApp:
    """asyncapp as a Flask extension, one per app: ``AsyncApp(app)`` or ``init_app``."""

    def __init__(
        self, app: Flask | None = None, *, job_modules: Sequence[str] | None = None
    ) -> None:
        """``job_modules``, when given, wins over ``ASYNCAPP_JOB_MODULES``: the modules
        whose ``@task`` functions this app knows and whose declared schedules it runs."""
        self.app: Flask | None = None
        self.job_modules = None if job_modules is None else list(job_modules)
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Attach to ``app``.

        :raises SettingsError: if a setting is invalid (naming the variable).
        :raises RuntimeError: if this extension is already attached to another app.
        """
        if self.app is not None and self.app is not app:
            raise RuntimeError("an AsyncApp serves one Flask app; create one per app")
        self.app = app
        overrides = dict(app.config)
        if self.job_modules is not None:
            overrides["ASYNCAPP_JOB_MODULES"] = self.job_modules
        self.settings: Settings = load_settings(overrides)
        self.runtime = Runtime(self.settings, run_context=app.app_context)
        app.extensions["asyncapp"] = self
        app.register_blueprint(_health_blueprint())
        logs.configure(self.settings.log_level, self.settings.log_format)
        init_api(app, self)
        init_dashboard(app, self)
        init_cli(app)

    async def start(self) -> None:
        """Start the runtime on the running loop (the ASGI lifespan calls this)."""
        await self.runtime.start()

    async def stop(self) -> None:
        await self.runtime.stop()

    def service(self) -> JobService:
        """The job service of the running app. :raises NotRunning: when not started."""
        return self.runtime.service

    def offline_service(self, *, writes: bool = True) -> AbstractAsyncContextManager[JobService]:
        """A job service over the database alone, that runs nothing (CLI commands).

        ``writes=False`` never writes, not even a schema upgrade: if the database
        needs one, it raises :class:`~asyncapp.errors.DatabaseUnavailable` saying so.
        """
        return offline_service(self.settings, writes=writes)

    @asynccontextmanager
    async def cli_runtime(self) -> AsyncIterator[Runtime]:
        """A runtime that can run a job now but fires nothing on schedule (``jobs run``)."""
        assert self.app is not None
        runtime = Runtime(self.settings, run_context=self.app.app_context, role=CLI)
        await runtime.start()
        try:
            yield runtime
        finally:
            await runtime.stop(grace=3600)


def extension(app: Flask) -> AsyncApp:
    """The :class:`AsyncApp` attached to ``app``. :raises RuntimeError: if none is."""
    ext = app.extensions.get("asyncapp")
    if not isinstance(ext, AsyncApp):
        raise RuntimeError("asyncapp is not attached to this Flask app; call AsyncApp(app)")
    return ext


def create_app(
    config: Mapping[str, Any] | None = None, *, job_modules: Sequence[str] | None = None
) -> Flask:
    """The ready app: Flask with asyncapp attached; add your routes and blueprints to it.

    ``config`` entries go to ``app.config``; ``ASYNCAPP_*`` keys override the
    environment.  ``job_modules`` names the modules of your ``@task`` jobs in code
    (instead of ``ASYNCAPP_JOB_MODULES``): the server (``to_asgi(app)``) and the
    CLI (``flask --app yourmodule jobs ...``) then load the same jobs.

    :raises SettingsError: if a setting is invalid.
    """
    app = Flask("asyncapp", static_folder=None)
    app.config.update(config or {})
    AsyncApp(app, job_modules=job_modules)
    return app


def _health_blueprint() -> Blueprint:
    health = Blueprint("asyncapp_health", __name__)

    @health.get("/healthz")
    async def healthz() -> Any:
        """Liveness: the process answers; what it and the cluster were doing at the last
        heartbeat.  It reads no database, so it answers fast under load and during outages."""
        runtime = extension(current_app).runtime
        return jsonify(status="ok", node=runtime.settings.node_name, scheduler=runtime.health())

    @health.get("/readyz")
    async def readyz() -> Any:
        """Readiness: the database answers and this process fires; 503 and why otherwise."""
        runtime = extension(current_app).runtime
        problems = runtime.problems()
        if runtime.started and not any("database" in problem for problem in problems):
            try:
                async with asyncio.timeout(READY_TIMEOUT):
                    await runtime.ping()
            except (DatabaseUnavailable, TimeoutError):
                problems.append("the database is unavailable")
        status = 503 if problems else 200
        return jsonify(ready=not problems, problems=problems), status

    return health
