"""``create_app`` and the Flask extension that attaches asyncapp to any Flask app.

Teams with an app of their own write ``AsyncApp(app)`` (or ``ext.init_app(app)``)
and serve ``asyncapp.asgi.to_asgi(app)``; ``create_app`` does exactly that on a
fresh Flask app.  The extension reads settings (environment, overridden by
``ASYNCAPP_*`` keys of the Flask config), owns the :class:`Runtime`, adds
``/healthz`` and ``/readyz``, the management API, the ``/dashboard`` pages and
the ``flask jobs`` CLI.
Jobs run inside the app's application context, so ``flask.current_app`` works
in them as in views.

Which jobs: ``job_modules`` (or ``ASYNCAPP_JOB_MODULES``) when given; else the
app's own package (the top of ``app.import_name``), so ``AsyncApp(app)``
schedules the ``@task(trigger)`` jobs the app declares and never the
package's examples, which belong to the default app (``create_app()``) alone.

The scheduler starts only in the ASGI lifespan, so an app served by a WSGI
server (``flask run``, gunicorn, or ``hypercorn module:app`` on the bare
Flask app) has none.  That is a serving mistake, and it fails loudly rather
than quietly: the first request logs one line saying so and how to serve the
app, and ``/healthz``, ``/readyz``, the management API and the dashboard
answer 503 with the same sentence.  ``flask run`` is not made to work: its
reloader runs the app in a second process, and a scheduler started there
without a lifespan would fire beside the one of the real server.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from flask import Flask, Response, jsonify, request

from asyncapp import logs
from asyncapp.engine.cluster import CLI
from asyncapp.errors import DatabaseUnavailable
from asyncapp.faces.api import init_api
from asyncapp.faces.cli import init_cli
from asyncapp.faces.dashboard.views import init_dashboard
from asyncapp.faces.health import health_blueprint
from asyncapp.runtime import Runtime, offline_service
from asyncapp.service.jobs import JobService
from asyncapp.settings import Settings, load_settings
from asyncapp.store.sql_jobs import APSCHEDULER_TABLE

log = logging.getLogger("asyncapp")

#: The modules of the default app's jobs; no other app gets them unless it names them.
EXAMPLES = "asyncapp.examples"
#: Blueprints that need the runtime: answered 503 with :data:`NOT_SERVED` without one.
RUNTIME_BLUEPRINTS = ("asyncapp_health", "scheduler", "dashboard")
NOT_SERVED = (
    "the asyncapp scheduler does not run in this process: it starts only when the app is "
    "served through asyncapp's ASGI app under Hypercorn, never under a WSGI server "
    "(flask run, gunicorn). Serve it with: hypercorn -c hypercorn.toml yourmodule:asgi_app, "
    "where asgi_app = asyncapp.asgi.to_asgi(app)"
)


class AsyncApp:
    """asyncapp as a Flask extension, one per app: ``AsyncApp(app)`` or ``init_app``."""

    def __init__(
        self,
        app: Flask | None = None,
        *,
        job_modules: Sequence[str] | None = None,
        api: bool = True,
    ) -> None:
        """``job_modules``, when given, wins over ``ASYNCAPP_JOB_MODULES``: the modules
        whose ``@task`` functions this app knows and whose declared schedules it runs.
        Neither given: the app's own package.  ``api=False`` leaves out the management
        API (``/scheduler``, ``/openapi.json``, ``/metrics``)."""
        self.app: Flask | None = None
        self.job_modules = None if job_modules is None else list(job_modules)
        self.api = api
        #: The loop the runtime runs on, while it runs (the sync Python API needs it).
        self.loop: asyncio.AbstractEventLoop | None = None
        self._told_not_served = False
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
        elif not _job_modules_set(app):
            overrides["ASYNCAPP_JOB_MODULES"] = [app.import_name.partition(".")[0]]
        self.settings: Settings = load_settings(overrides)
        self.runtime = Runtime(self.settings, run_context=app.app_context)
        app.extensions["asyncapp"] = self
        app.register_blueprint(health_blueprint())
        app.before_request(self._unless_served)
        logs.configure(self.settings.log_level, self.settings.log_format)
        if self.api:
            init_api(app, self)
        init_dashboard(app, self)
        init_cli(app)

    def add_job_modules(self, modules: Sequence[str]) -> None:
        """Also load ``modules`` and run their declared jobs (before the app starts).

        :raises RuntimeError: once started: the declarations are applied at start.
        """
        missing = [name for name in modules if name not in self.settings.job_modules]
        if not missing:
            return
        if self.runtime.started:
            raise RuntimeError("job modules can only be added before the app starts")
        self.settings = self.settings.model_copy(
            update={"job_modules": [*self.settings.job_modules, *missing]}
        )
        self.runtime.settings = self.settings

    async def start(self) -> None:
        """Start the runtime on the running loop (the ASGI lifespan calls this)."""
        await self.runtime.start()
        self.loop = asyncio.get_running_loop()
        await _warn_of_apscheduler_store(self.runtime)

    async def stop(self) -> None:
        self.loop = None
        await self.runtime.stop()

    def _unless_served(self) -> Response | None:
        """Answer for the runtime's routes, and say once, when it does not run here."""
        if self.runtime.started:
            return None
        if not self._told_not_served:
            self._told_not_served = True
            log.error("%s", NOT_SERVED)
        if request.blueprint not in RUNTIME_BLUEPRINTS:
            return None
        answer = jsonify(
            status="not_running",
            ready=False,
            problems=[NOT_SERVED],
            error_message=NOT_SERVED,
            errors=[],
        )
        answer.status_code = 503
        return answer

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
    CLI (``flask --app yourmodule jobs ...``) then load the same jobs.  Named
    nowhere, they are ``asyncapp.examples``: this is the default app.

    :raises SettingsError: if a setting is invalid.
    """
    app = Flask("asyncapp", static_folder=None)
    app.config.update(config or {})
    if job_modules is None and not _job_modules_set(app):
        job_modules = [EXAMPLES]
    AsyncApp(app, job_modules=job_modules)
    return app


async def _warn_of_apscheduler_store(runtime: Runtime) -> None:
    """Say so when the database holds jobs of APScheduler's ``SQLAlchemyJobStore``.

    An app moving from Flask-APScheduler or APScheduler often keeps its database
    URL; those jobs are pickles, which asyncapp never loads (loading one runs code
    from the database), so they would otherwise be ignored without a word.
    """
    try:
        found = await runtime.store.legacy_jobs()
    except DatabaseUnavailable:
        return
    if found:
        log.warning(
            "%d jobs of APScheduler's job store (table %s) are in this database and are not "
            "read: they are pickles. Declare them with @task or add them through the API "
            "(docs/migrating.md)",
            found,
            APSCHEDULER_TABLE,
        )


def _job_modules_set(app: Flask) -> bool:
    """Whether the job modules are named in the environment or the app's config."""
    key = "ASYNCAPP_JOB_MODULES"
    return key in os.environ or key in app.config
