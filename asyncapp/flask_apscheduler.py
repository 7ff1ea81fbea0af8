"""A drop-in for Flask-APScheduler: change the import, add a token, serve with Hypercorn.

::

    from asyncapp.flask_apscheduler import APScheduler   # was: from flask_apscheduler ...

    scheduler = APScheduler()

    @scheduler.task("interval", id="do_job_1", seconds=30)
    def job1(): ...

    app = Flask(__name__)
    app.config.from_object(Config())      # SCHEDULER_JOBS, SCHEDULER_API_ENABLED ...
    scheduler.init_app(app)
    scheduler.start()

    # served with:  ASYNCAPP_API_TOKEN=... hypercorn -c hypercorn.toml 'yourmodule:scheduler.asgi'

Flask-APScheduler 1.13's public surface (read from its ``scheduler.py``), each
call going through asyncapp's one job service (same validation, history,
claims; every process of the app sees the same jobs):

- Jobs declared before the server starts (``@scheduler.task``,
  ``SCHEDULER_JOBS``/``JOBS``, ``add_job`` at import time) are declared in code,
  as ``@task(trigger)`` jobs are: written at startup, kept when the code does
  not change, removed when the code stops declaring them.  Their id defaults to
  the function's ``module:name`` (APScheduler would make a random one at each
  start).  Their functions are registered as if decorated with ``@task``.
- Once the server runs, ``add_job`` (from a view), ``modify_job``,
  ``reschedule_job``, ``pause_job``, ``resume_job``, ``remove_job``,
  ``run_job``, ``get_job(s)``, ``pause``, ``resume``, ``start`` and ``shutdown``
  are the sync Python API (:mod:`asyncapp.faces.python`), recorded with
  ``source: "code"``.  ``get_job`` returns None for an unknown id; the others
  raise :class:`~asyncapp.errors.JobNotFound` (a ``LookupError``, as
  APScheduler's ``JobLookupError`` is).  Jobs come back as
  :class:`asyncapp.Job` values (``id``, ``name``, ``func``, ``args``,
  ``next_run_time``...), not APScheduler ``Job`` objects.
- ``run_job`` starts a recorded run on the server loop and returns it; it no
  longer calls the function inside the request.  ``shutdown`` stops firing in
  every process (state ``stopped``) and lets the processes serve on; ``start``
  undoes it.  Before the server runs, ``start()`` only notes ``paused``: the
  scheduler starts with the ASGI lifespan.
- Config: ``SCHEDULER_TIMEZONE`` is ``ASYNCAPP_TIMEZONE``;
  ``SCHEDULER_API_ENABLED`` (or ``api_enabled = True``) adds the management
  API under ``SCHEDULER_API_PREFIX``, which now needs ``ASYNCAPP_API_TOKEN``;
  ``SCHEDULER_JOB_DEFAULTS``' ``coalesce`` and ``misfire_grace_time`` are the
  ``ASYNCAPP_`` defaults, its ``max_instances`` the default of this
  scheduler's jobs.  ``ASYNCAPP_*`` keys set in the config win.

What cannot apply stops startup, with one line naming the key and what to use
instead, never silently: ``SCHEDULER_JOBSTORES`` (jobs live in
``ASYNCAPP_DATABASE_URL`` as JSON, never pickles), ``SCHEDULER_EXECUTORS``
(``async def`` jobs run on the server loop, ``def`` jobs in
``ASYNCAPP_JOB_THREADS`` threads), ``SCHEDULER_ALLOWED_HOSTS`` (every process
fires, and each scheduled time is claimed once in the database),
``SCHEDULER_AUTH`` and ``authenticate`` (``ASYNCAPP_API_TOKEN``), a
``scheduler=`` of your own, ``jobstore``/``executor`` arguments.  The check
runs at lifespan startup, so Hypercorn exits with status 1 after the one line.

Why a top-level module: it builds the extension (:mod:`asyncapp.app`) and the
ASGI app (:mod:`asyncapp.asgi`), so it sits above both in the layers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from apscheduler.util import ref_to_obj
from flask import Flask

from asyncapp.app import AsyncApp
from asyncapp.asgi import AsgiApp, to_asgi
from asyncapp.errors import JobNotFound, SettingsError
from asyncapp.faces.python import Job, JobRun, Jobs, SyncJobs
from asyncapp.model.tasks import reference, registry
from asyncapp.model.triggers import spec_from_args

__all__ = ["APScheduler"]

F = TypeVar("F", bound=Callable[..., Any])

#: APScheduler's scheduler states, as Flask-APScheduler's ``state`` reports them.
STATE_STOPPED, STATE_RUNNING, STATE_PAUSED = 0, 1, 2
_STATES = {"running": STATE_RUNNING, "paused": STATE_PAUSED}

#: Config keys that cannot apply, and what to use instead.
UNSUPPORTED = {
    "SCHEDULER_JOBSTORES": "asyncapp keeps jobs as JSON (never pickles) in the database "
    "named by ASYNCAPP_DATABASE_URL; remove it and set ASYNCAPP_DATABASE_URL",
    "SCHEDULER_EXECUTORS": "async def jobs run on the server loop and def jobs in "
    "ASYNCAPP_JOB_THREADS threads; remove it",
    "SCHEDULER_ALLOWED_HOSTS": "every process may fire and each scheduled time is claimed "
    "once in the database (docs/deploy.md); remove it",
    "SCHEDULER_AUTH": "the API takes a bearer token; remove it and set ASYNCAPP_API_TOKEN",
}
#: Options of APScheduler's ``add_job`` that asyncapp has as well.
JOB_OPTIONS = ("misfire_grace_time", "coalesce", "max_instances")
#: ``add_job`` arguments with no meaning here, accepted for compatibility.
IGNORED = ("replace_existing",)


class APScheduler:
    """Flask-APScheduler's ``APScheduler`` on asyncapp: the same calls and config keys."""

    def __init__(self, scheduler: Any = None, app: Flask | None = None) -> None:
        self.app: Flask | None = None
        self.api_enabled = False
        self.api_prefix = "/scheduler"
        self.allowed_hosts = ["*"]
        self._problems: list[str] = []
        self._declared: dict[str, str] = {}  # job id -> function reference
        # Jobs whose function is given as "module:name": resolved at start.
        self._pending: list[tuple[str, dict[str, Any]]] = []
        self._modules: list[str] = []
        self._job_defaults: dict[str, Any] = {}
        self._start_paused = False
        self._ext: _Extension | None = None
        self._asgi: AsgiApp | None = None
        if scheduler is not None:
            self._problems.append(
                "APScheduler(scheduler=...): asyncapp runs its own scheduler on the server "
                "loop; drop the argument and configure it with ASYNCAPP_* settings"
            )
        if app is not None:
            self.init_app(app)

    # -- setup --------------------------------------------------------------------

    def init_app(self, app: Flask) -> None:
        """Read the ``SCHEDULER_*`` config, declare ``SCHEDULER_JOBS`` and attach asyncapp.

        :raises SettingsError: for an invalid ``ASYNCAPP_*`` setting.
        """
        self.app = app
        app.apscheduler = self  # type: ignore[attr-defined]
        config = app.config
        for key, instead in UNSUPPORTED.items():
            value = config.get(key)
            if value and not (key == "SCHEDULER_ALLOWED_HOSTS" and list(value) == ["*"]):
                self._problems.append(f"{key}: {instead}")
        endpoint_prefix = config.get("SCHEDULER_ENDPOINT_PREFIX", "scheduler.")
        if endpoint_prefix != "scheduler.":
            self._problems.append(
                "SCHEDULER_ENDPOINT_PREFIX: the API's endpoints are scheduler.<name>; remove it"
            )
        timezone = config.get("SCHEDULER_TIMEZONE")
        if timezone:
            config.setdefault("ASYNCAPP_TIMEZONE", str(getattr(timezone, "key", timezone)))
        self._read_job_defaults(config.get("SCHEDULER_JOB_DEFAULTS") or {})
        self.api_enabled = bool(
            config.get("SCHEDULER_API_ENABLED", config.get("SCHEDULER_VIEWS_ENABLED"))
            or self.api_enabled
        )
        self.api_prefix = config.get("SCHEDULER_API_PREFIX", self.api_prefix)
        config.setdefault("ASYNCAPP_API_PREFIX", self.api_prefix)
        for job in config.get("SCHEDULER_JOBS") or config.get("JOBS") or ():
            self.add_job(**job)
        self._ext = _Extension(self, app, api=self.api_enabled)
        self._ext.add_job_modules(self._modules)

    def _read_job_defaults(self, defaults: Mapping[str, Any]) -> None:
        config = self.app.config if self.app is not None else {}
        for key, value in defaults.items():
            if key == "coalesce":
                config.setdefault("ASYNCAPP_COALESCE", value)
            elif key == "misfire_grace_time":
                # APScheduler's None (no limit) as the longest grace the API accepts.
                grace = 366 * 86400 if value is None else value
                config.setdefault("ASYNCAPP_MISFIRE_GRACE_TIME", grace)
            elif key == "max_instances":
                self._job_defaults["max_instances"] = value
            else:
                self._problems.append(
                    f"SCHEDULER_JOB_DEFAULTS: {key!r} is not an option here; use coalesce, "
                    "misfire_grace_time or max_instances"
                )

    @property
    def asgi(self) -> AsgiApp:
        """The ASGI app to serve: ``hypercorn -c hypercorn.toml 'yourmodule:scheduler.asgi'``."""
        if self.app is None:
            raise RuntimeError("call scheduler.init_app(app) before serving scheduler.asgi")
        if self._asgi is None:
            self._asgi = to_asgi(self.app)
        return self._asgi

    # -- the scheduler ------------------------------------------------------------

    @property
    def host_name(self) -> str:
        return self._extension().settings.node_name

    @property
    def running(self) -> bool:
        """True while this process fires jobs (served, and the scheduler not paused
        or stopped)."""
        return self.state == STATE_RUNNING

    @property
    def state(self) -> int:
        """APScheduler's ``STATE_STOPPED`` (0), ``STATE_RUNNING`` (1) or ``STATE_PAUSED`` (2)."""
        ext = self._extension()
        if not ext.runtime.started:
            return STATE_STOPPED
        return _STATES.get(ext.runtime.health()["state"], STATE_STOPPED)

    @property
    def scheduler(self) -> Any:
        raise AttributeError(
            "asyncapp's scheduler is not an APScheduler BackgroundScheduler; use this "
            "object's methods or asyncapp.jobs"
        )

    def start(self, paused: bool = False) -> None:
        """Before serving: note ``paused`` (the scheduler starts with the server).
        While serving: fire again after :meth:`shutdown` (or :meth:`pause`)."""
        if not self._extension().runtime.started:
            self._start_paused = paused
            return
        jobs = self._jobs()
        (jobs.pause_scheduler if paused else jobs.resume_scheduler)()

    def shutdown(self, wait: bool = True) -> None:
        """Stop firing in every process until :meth:`start`; running jobs go on."""
        self._jobs().stop_scheduler()

    def pause(self) -> None:
        """Stop firing in every process until :meth:`resume`; running jobs go on."""
        self._jobs().pause_scheduler()

    def resume(self) -> None:
        self._jobs().resume_scheduler()

    def add_listener(self, callback: Callable[..., Any], mask: int = 0) -> None:
        raise NotImplementedError(
            "asyncapp has no scheduler events; read the run history (asyncapp.jobs.runs, "
            "GET /scheduler/jobs/<id>/runs) or the metrics"
        )

    def remove_listener(self, callback: Callable[..., Any]) -> None:
        self.add_listener(callback)

    def authenticate(self, func: F) -> F:
        self._problems.append(
            "scheduler.authenticate: the API takes a bearer token; remove it and set "
            "ASYNCAPP_API_TOKEN"
        )
        return func

    # -- jobs -----------------------------------------------------------------------

    def task(
        self, trigger: str, args: Sequence[Any] | None = None, **options: Any
    ) -> Callable[[F], F]:
        """``@scheduler.task("interval", id="do_job_1", seconds=30)``: declare a job."""

        def decorate(func: F) -> F:
            self.add_job(options.pop("id", None), func, trigger=trigger, args=args, **options)
            return func

        return decorate

    def add_job(self, id: str | None, func: Callable[..., Any] | str, **kwargs: Any) -> Job:
        """Declare a job (before the server runs) or add one (while it runs).

        ``kwargs`` are APScheduler's: ``trigger`` and its fields, ``args``,
        ``kwargs``, ``name``, ``misfire_grace_time``, ``coalesce``,
        ``max_instances``, ``replace_existing`` (always so for declared jobs),
        plus asyncapp's options (``timeout``, ``retries``, ``overlap``...).

        :raises InvalidJob, JobExists: while the server runs (before, at startup).
        """
        job = dict(kwargs)
        for name in ("jobstore", "executor", "next_run_time"):
            if name in job:
                job.pop(name)
                self._problems.append(f"add_job({id!r}): {name} is not supported here; remove it")
        replace = bool(job.pop("replace_existing", False))
        for name in IGNORED:
            job.pop(name, None)
        trigger = job.pop("trigger", "date")
        args = list(job.pop("args", None) or ())
        call_kwargs = dict(job.pop("kwargs", None) or {})
        for key, value in self._job_defaults.items():
            job.setdefault(key, value)
        ext = self._ext
        if ext is not None and ext.runtime.started:
            jobs = self._jobs()
            ref = _register(func)
            if replace and id is not None and jobs.find(id) is not None:
                jobs.remove(id)
            return jobs.add(ref, trigger, id=id, args=args, kwargs=call_kwargs, **job)
        declaration = {"trigger": trigger, "args": args, "kwargs": call_kwargs, **job}
        if isinstance(func, str):
            module, _, _ = func.partition(":")
            job_id = id or func
            self._pending.append((func, {**declaration, "id": job_id}))
        else:
            module, job_id = func.__module__, id or reference(func)
            self._declare(func, {**declaration, "id": job_id})
        self._note_module(module)
        spec = spec_from_args(trigger, **{k: v for k, v in job.items() if k not in _NOT_TRIGGER})
        return Job(
            id=job_id,
            name=job.get("name") or job_id,
            func=func if isinstance(func, str) else reference(func),
            trigger=spec,
            args=tuple(args),
            kwargs=call_kwargs,
        )

    def get_job(self, id: str, jobstore: str | None = None) -> Job | None:
        return self._jobs().find(id)

    def get_jobs(self, jobstore: str | None = None) -> list[Job]:
        return self._jobs().list()

    def modify_job(self, id: str, jobstore: str | None = None, **changes: Any) -> Job:
        """Change a job; a ``trigger`` with its fields replaces its schedule."""
        func = changes.pop("func", None)
        return self._jobs().modify(id, func=None if func is None else _register(func), **changes)

    def reschedule_job(
        self, id: str, jobstore: str | None = None, trigger: str | None = None, **trigger_args: Any
    ) -> Job:
        return self._jobs().modify(id, trigger=trigger or "date", **trigger_args)

    def pause_job(self, id: str, jobstore: str | None = None) -> Job:
        return self._jobs().pause(id)

    def resume_job(self, id: str, jobstore: str | None = None) -> Job:
        return self._jobs().resume(id)

    def remove_job(self, id: str, jobstore: str | None = None) -> None:
        self._jobs().remove(id)

    def remove_all_jobs(self, jobstore: str | None = None) -> None:
        jobs = self._jobs()
        for job in jobs.list():
            try:
                jobs.remove(job.id)
            except JobNotFound:
                continue

    def run_job(self, id: str, jobstore: str | None = None) -> JobRun:
        """Start a run of the job now, recorded in its history; returns it as started."""
        return self._jobs().run_now(id)

    # -- helpers ------------------------------------------------------------------

    def _extension(self) -> _Extension:
        if self._ext is None:
            raise RuntimeError("call scheduler.init_app(app) first")
        return self._ext

    def _jobs(self) -> SyncJobs:
        return SyncJobs(self._extension().app)

    def _declare(self, func: Callable[..., Any], declaration: dict[str, Any]) -> None:
        ref = reference(func)
        job_id = declaration["id"]
        other = next((i for i, r in self._declared.items() if r == ref and i != job_id), None)
        if other is not None:
            self._problems.append(
                f"{ref} is declared as job {other!r} and as {job_id!r}: one declared job per "
                "function here; add the second with add_job once the server runs"
            )
            return
        self._declared[job_id] = ref
        registry.add(func, declaration)

    def _note_module(self, module: str) -> None:
        if module in self._modules:
            return
        self._modules.append(module)
        if self._ext is not None:
            self._ext.add_job_modules([module])

    def _resolve_pending(self) -> None:
        """Declare the jobs named by reference, now that every module is imported."""
        for ref, declaration in self._pending:
            try:
                func = ref_to_obj(ref)
            except (ImportError, LookupError, ValueError) as exc:
                self._problems.append(f"job {declaration['id']!r}: cannot import {ref!r}: {exc}")
                continue
            self._declare(func, declaration)
        self._pending.clear()


#: Keys of a declaration that are not trigger fields.
_NOT_TRIGGER = frozenset(
    {"name", "timeout", "retries", "overlap", "rerun_interrupted", "paused", *JOB_OPTIONS}
)


def _register(func: Callable[..., Any] | str) -> str:
    """Register a function the code names (the code is trusted; API input is not)."""
    target = ref_to_obj(func) if isinstance(func, str) else func
    ref = reference(target)
    if ref not in registry:
        registry.add(target, None)
    return ref


class _Extension(AsyncApp):
    """asyncapp's extension, reporting the drop-in's problems at startup."""

    def __init__(self, owner: APScheduler, app: Flask, *, api: bool) -> None:
        self.owner = owner
        super().__init__(app, api=api)

    async def start(self) -> None:
        owner = self.owner
        owner._resolve_pending()
        if owner._problems:
            raise SettingsError(owner._problems)
        await super().start()
        if owner._start_paused:
            await Jobs(self.app).pause_scheduler()
