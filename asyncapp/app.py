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

import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from flask import Flask

from asyncapp import logs
from asyncapp.engine.cluster import CLI
from asyncapp.faces.api import init_api
from asyncapp.faces.cli import init_cli
from asyncapp.faces.dashboard.views import init_dashboard
from asyncapp.faces.health import health_blueprint
from asyncapp.runtime import Runtime, offline_service
from asyncapp.service.jobs import JobService
from asyncapp.settings import Settings, load_settings

log = logging.getLogger("asyncapp")


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
        app.register_blueprint(health_blueprint())
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
