"""The dashboard: see and steer the jobs in a browser, under ``/dashboard``.

Pages, server-rendered with Jinja (templates in ``asyncapp/templates/dashboard``,
CSS and one small script in ``asyncapp/static``, served by the package; nothing
is built, nothing comes from another site):

- ``/dashboard/``: the jobs, paged and filtered in the database;
- ``/dashboard/jobs/<id>``: a job's settings, next fire times, recent runs
  with a chart of their durations and start lateness, and its change history;
- ``/dashboard/runs``: runs of every job, by status and time window;
- ``/dashboard/processes``: the live processes and the scheduler's state.

Each page marks parts of itself as live regions; the script asks the same URL
with ``?live=1`` every :data:`POLL_MS` milliseconds and gets those parts as
JSON (``{"regions": {id: {"html", "hash"}}}``), rendered by the same templates,
and swaps in those whose hash changed.  Actions (pause with a note, resume,
run now, delete after a confirmation page, scheduler pause and resume) are
POST forms that work without the script; with it, the job page sends them
without leaving the page.  Every action goes through :class:`JobService` as
``Actor("dashboard", <client address>)``, so the change history says
``dashboard``.  Login, session, CSRF, rate limit and headers:
:mod:`asyncapp.websecurity`.

Views are ``async def`` and run on the server loop; the database work is off
it, in the service, and a page renders at most :data:`PAGE_SIZE` rows.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

from flask import (
    Blueprint,
    Flask,
    Response,
    current_app,
    g,
    jsonify,
    render_template,
    request,
    url_for,
)
from flask.sessions import SecureCookieSession, SessionMixin
from markupsafe import Markup
from werkzeug.exceptions import HTTPException

from . import metrics
from .api import STATUS
from .charts import run_chart
from .constants import JOB_FILTERS, MISSED_REASONS, RUN_STATUSES, JobFilter
from .errors import AsyncAppError, DatabaseUnavailable, InvalidJob, JobNotFound
from .humanize import (
    describe_trigger,
    format_duration,
    format_utc,
    run_duration,
    start_lateness,
    trigger_spec,
)
from .service import JobService
from .store import Actor
from .websecurity import (
    HEADERS,
    DashboardSessions,
    SlidingWindow,
    csrf_matches,
    logged_in,
    login_mark,
    new_csrf_token,
    token_matches,
)

if TYPE_CHECKING:
    from .app import AsyncApp

log = logging.getLogger("asyncapp.dashboard")

PREFIX = "/dashboard"
PAGE_SIZE = 50
RECENT_RUNS = 30
RECENT_CHANGES = 20
UPCOMING = 5
POLL_MS = 2000
#: Forms carry a note at most; anything larger is not from the dashboard.
MAX_FORM_BYTES = 16 * 1024
WINDOWS = {
    "1h": ("the last hour", timedelta(hours=1)),
    "24h": ("the last 24 hours", timedelta(days=1)),
    "7d": ("the last 7 days", timedelta(days=7)),
    "30d": ("the last 30 days", timedelta(days=30)),
}
DASHBOARD_OFF = (
    "The dashboard is off because no token is configured. Set the ASYNCAPP_API_TOKEN "
    "environment variable (a long random string) where the server runs, restart it, "
    "and log in here with that token."
)
TITLES = {401: "Not logged in", 403: "Refused", 404: "Not found", 409: "Busy", 503: "Unavailable"}
BAD_FORM = "This form is out of date or did not come from the dashboard; reload the page."


@dataclass
class Dashboard:
    """What the dashboard keeps per app."""

    ext: AsyncApp
    sessions: DashboardSessions
    logins: SlidingWindow
    compiled: bool = False


def warm_templates(app: Flask) -> None:
    """Compile the dashboard's templates now: about 0.13 s, which the first page view
    would otherwise spend on the loop.  Called in a thread at the first page view."""
    loader = app.jinja_env.loader
    names = loader.list_templates() if loader is not None else []
    for name in names:
        if name.startswith("dashboard/"):
            app.jinja_env.get_template(name)


def init_dashboard(app: Flask, ext: AsyncApp) -> None:
    """Register the dashboard's pages on ``app`` under :data:`PREFIX`."""
    app.extensions["asyncapp_dashboard"] = Dashboard(
        ext, DashboardSessions(PREFIX, _token), SlidingWindow()
    )
    bp = Blueprint(
        "dashboard",
        __name__,
        url_prefix=PREFIX,
        template_folder="templates",
        static_folder="static",
        static_url_path="/static",
    )
    for rule, view, methods in ROUTES:
        bp.add_url_rule(rule, view.__name__, view, methods=methods)
    bp.before_request(_guard)
    bp.after_request(_save_session)
    bp.context_processor(_helpers)
    bp.register_error_handler(HTTPException, _http_error)
    bp.register_error_handler(Exception, _error)
    app.register_blueprint(bp)
    # App-wide, so that routing errors under the prefix get them too.
    app.after_request(_security_headers)


# -- plumbing ----------------------------------------------------------------------


def _dashboard() -> Dashboard:
    found = current_app.extensions["asyncapp_dashboard"]
    assert isinstance(found, Dashboard)
    return found


def _service() -> JobService:
    return _dashboard().ext.service()


def _token() -> str | None:
    token = _dashboard().ext.settings.api_token
    return None if token is None else token.get_secret_value()


def _actor() -> Actor:
    return Actor("dashboard", request.remote_addr)


def _session() -> SessionMixin:
    found = g.get("asyncapp_dashboard_session")
    if found is None:
        opened = _dashboard().sessions.open_session(current_app, request)
        found = g.asyncapp_dashboard_session = opened or SecureCookieSession()
    assert isinstance(found, SessionMixin)
    return found


def _under_prefix(path: str) -> bool:
    return path == PREFIX or path.startswith(PREFIX + "/")


def _wants_json() -> bool:
    return request.args.get("live") == "1" or request.accept_mimetypes.best == "application/json"


def _guard() -> Response | None:
    """Login and CSRF checks before any view of the dashboard runs."""
    if request.endpoint == "dashboard.static":
        return None
    request.max_content_length = MAX_FORM_BYTES
    token = _token()
    if token is None:
        return _message("Dashboard off", DASHBOARD_OFF, 403)
    if request.endpoint in ("dashboard.login", "dashboard.logout"):
        return None
    session = _session()
    if not logged_in(session, token):
        if _wants_json():
            return _json_message("Your session ended: log in again.", 401)
        if request.method == "GET":
            return _see_other(url_for("dashboard.login", next=request.full_path.rstrip("?")))
        return _message(
            "Not logged in", "Log in first.", 401, (url_for("dashboard.login"), "Log in")
        )
    if request.method == "POST" and not csrf_matches(session, request.form.get("csrf_token")):
        return _json_message(BAD_FORM, 403) if _wants_json() else _message("Refused", BAD_FORM, 403)
    return None


def _save_session(response: Response) -> Response:
    session = g.get("asyncapp_dashboard_session")
    if isinstance(session, SessionMixin) and _token() is not None:
        _dashboard().sessions.save_session(current_app, session, response)
    return response


def _security_headers(response: Response) -> Response:
    if _under_prefix(request.path):
        response.headers.update(HEADERS)
    return response


def _flash(message: str, kind: str = "ok") -> None:
    session = _session()
    session["flash"] = [*session.get("flash", []), [kind, message]]


def _messages() -> list[list[str]]:
    session = _session()
    return list(session.pop("flash", [])) if "flash" in session else []


def _url_with(**changes: Any) -> str:
    """This page's URL with query arguments changed (None removes one)."""
    args: dict[str, Any] = request.args.to_dict()
    args.pop("live", None)
    args.update(changes)
    args = {key: value for key, value in args.items() if value not in (None, "")}
    assert request.endpoint is not None
    return url_for(request.endpoint, **(request.view_args or {}), **args)


def _helpers() -> dict[str, Any]:
    return {
        "describe": lambda job: describe_trigger(trigger_spec(job)),
        "duration": format_duration,
        "run_duration": lambda run: format_duration(run_duration(run)),
        "lateness": lambda run: format_duration(start_lateness(run)),
        "utc": format_utc,
        "iso_epoch": lambda seconds: datetime.fromtimestamp(seconds, UTC).isoformat(),
        "spec": trigger_spec,
        "inf": math.inf,
        "csrf_token": lambda: _session().get("csrf", ""),
        "messages": _messages,
        "url_with": _url_with,
        "reasons": MISSED_REASONS,
        "scheduler_state": lambda: _dashboard().ext.runtime.health().get("state", "stopped"),
    }


def _render(
    template: str,
    *,
    regions: Mapping[str, str] | None = None,
    status: int = 200,
    **context: Any,
) -> Response:
    """A page; with ``?live=1``, only its live regions, as JSON for the script."""
    parts = {
        region: render_template(f"dashboard/{name}", **context)
        for region, name in (regions or {}).items()
    }
    hashes = {
        region: hashlib.sha256(html.encode()).hexdigest()[:16] for region, html in parts.items()
    }
    if request.args.get("live") == "1":
        return jsonify(
            regions={region: {"html": parts[region], "hash": hashes[region]} for region in parts}
        )
    wrapped = {
        region: Markup('<div id="{}" class="live" data-live-hash="{}">{}</div>').format(
            region,
            hashes[region],
            Markup(html),  # noqa: S704 - the output of an autoescaping template
        )
        for region, html in parts.items()
    }
    live_url = _url_with(live=1) if parts else None
    html = render_template(
        f"dashboard/{template}", regions=wrapped, live_url=live_url, poll_ms=POLL_MS, **context
    )
    return current_app.response_class(html, status=status, mimetype="text/html")


async def _page(template: str, **options: Any) -> Response:
    """:func:`_render` for an async view, the templates compiled off the loop the first time."""
    dashboard = _dashboard()
    if not dashboard.compiled:
        # The thread runs in a copy of this context, so current_app is this app there too.
        await asyncio.to_thread(warm_templates, current_app)
        dashboard.compiled = True
    return _render(template, **options)


def _message(title: str, text: str, status: int, link: tuple[str, str] | None = None) -> Response:
    return _render("message.html", title=title, text=text, status=status, link=link)


def _to_jobs() -> tuple[str, str]:
    return url_for("dashboard.jobs"), "Back to the jobs"


def _to_login() -> tuple[str, str]:
    return url_for("dashboard.login"), "Log in"


def _digest(html: str) -> str:
    return hashlib.sha256(html.encode()).hexdigest()[:16]


def _json_message(message: str, status: int) -> Response:
    response = jsonify(ok=status < 400, message=message)
    response.status_code = status
    return response


def _see_other(location: str) -> Response:
    response = current_app.response_class(status=303)
    response.headers["Location"] = location
    return response


def _done(message: str, location: str) -> Response:
    """An action's answer: JSON for the script, else back to ``location`` with a message."""
    if _wants_json():
        return _json_message(message, 200)
    _flash(message)
    return _see_other(location)


# -- login ---------------------------------------------------------------------------


def login() -> Response:
    token = _token()
    assert token is not None  # the guard answered otherwise
    session = _session()
    if request.method == "GET":
        if logged_in(session, token):
            return _see_other(_next_page())
        notice = "You are logged out." if request.args.get("out") else None
        return _render("login.html", notice=notice)
    wait = _dashboard().logins.hit(request.remote_addr or "unknown")
    if wait:
        seconds = math.ceil(wait)
        error = f"Too many login attempts from your address; try again in {seconds} s."
        response = _render("login.html", error=error, status=429)
        response.headers["Retry-After"] = str(seconds)
        return response
    if not token_matches(request.form.get("token", ""), token):
        return _render("login.html", error="Wrong token.", status=401)
    session.clear()  # a new session at every login: nothing set before it survives
    session.update(login=login_mark(token), at=time.time(), csrf=new_csrf_token())
    return _see_other(_next_page())


def logout() -> Response:
    session = _session()
    if logged_in(session, _token()) and not csrf_matches(session, request.form.get("csrf_token")):
        return _message("Refused", BAD_FORM, 403)
    session.clear()
    return _see_other(url_for("dashboard.login", out=1))


def _next_page() -> str:
    """Where to go after logging in: a dashboard page named in ``next``, else the jobs."""
    target = request.args.get("next", "")
    if _under_prefix(target.split("?")[0]) and "//" not in target and "\\" not in target:
        return target
    return url_for("dashboard.jobs")


# -- pages ---------------------------------------------------------------------------


async def jobs() -> Response:
    search = request.args.get("q", "").strip()[:200]
    state = request.args.get("state")
    chosen = cast(JobFilter, state) if state in JOB_FILTERS else None
    page = _page_number()
    listing = await _service().job_page(
        search=search or None, state=chosen, limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE
    )
    return await _page(
        "jobs.html",
        regions={"jobs-table": "_jobs_table.html"},
        listing=listing,
        pager=_pager(page, listing["total"]),
        search=search,
        state=chosen,
        filters=JOB_FILTERS,
        nav="jobs",
    )


async def job(job_id: str) -> Response:
    service = _service()
    found = await service.get_job(job_id)
    runs = await service.list_runs(job_id, limit=RECENT_RUNS)
    changes = await service.job_changes(job_id, limit=RECENT_CHANGES)
    try:
        upcoming, upcoming_error = (await service.upcoming(job_id, UPCOMING))["times"], None
    except InvalidJob as exc:
        upcoming, upcoming_error = [], "; ".join(error["message"] for error in exc.errors)
    return await _page(
        "job.html",
        regions={
            "job-state": "_job_state.html",
            "job-actions": "_job_actions.html",
            "job-upcoming": "_job_upcoming.html",
            "job-runs": "_job_runs.html",
            "job-changes": "_job_changes.html",
        },
        job=found,
        runs=runs,
        chart=run_chart(runs["runs"]),
        changes=changes,
        upcoming=upcoming,
        upcoming_error=upcoming_error,
        nav="jobs",
    )


async def runs() -> Response:
    status = request.args.get("status")
    status = status if status in RUN_STATUSES else None
    window = request.args.get("window")
    window = window if window in WINDOWS else None
    job_id = request.args.get("job", "").strip()[:200] or None
    since = datetime.now(UTC) - WINDOWS[window][1] if window else None
    page = _page_number()
    listing = await _service().list_runs(
        job_id, status, PAGE_SIZE, (page - 1) * PAGE_SIZE, since=since
    )
    return await _page(
        "runs.html",
        regions={"runs-table": "_runs_page_table.html"},
        listing=listing,
        pager=_pager(page, listing["total"]),
        run_status=status,
        statuses=RUN_STATUSES,
        window=window,
        windows=WINDOWS,
        job_id=job_id,
        nav="runs",
    )


async def processes() -> Response:
    runtime = _dashboard().ext.runtime
    return await _page(
        "processes.html",
        regions={"processes": "_processes.html"},
        cluster=await _service().processes(),
        database="unavailable" if runtime.db.down_since is not None else "ok",
        lag=metrics.loop_lag_summary(),
        nav="processes",
    )


async def confirm_delete(job_id: str) -> Response:
    found = await _service().get_job(job_id)
    return await _page("confirm_delete.html", job=found, nav="jobs")


def _page_number() -> int:
    try:
        return max(1, min(int(request.args.get("page", "1")), 10**6))
    except ValueError:
        return 1


def _pager(page: int, total: int) -> dict[str, int]:
    pages = max(1, math.ceil(total / PAGE_SIZE))
    first = (page - 1) * PAGE_SIZE + 1 if total else 0
    return {"page": page, "pages": pages, "first": first, "last": min(page * PAGE_SIZE, total)}


# -- actions -------------------------------------------------------------------------


async def pause_job(job_id: str) -> Response:
    note = request.form.get("note", "").strip() or None
    await _service().pause_job(job_id, _actor(), note)
    said = f" ({note})" if note else ""
    return _done(f"Paused {job_id}{said}.", url_for("dashboard.job", job_id=job_id))


async def resume_job(job_id: str) -> Response:
    await _service().resume_job(job_id, _actor())
    return _done(f"Resumed {job_id}.", url_for("dashboard.job", job_id=job_id))


async def run_job(job_id: str) -> Response:
    await _service().run_job(job_id, _actor())
    return _done(f"Started a run of {job_id}.", url_for("dashboard.job", job_id=job_id))


async def delete_job(job_id: str) -> Response:
    await _service().delete_job(job_id, _actor())
    return _done(f"Deleted {job_id}; its run history stays.", url_for("dashboard.jobs"))


async def pause_scheduler() -> Response:
    await _service().pause_scheduler(_actor())
    return _done("Paused the scheduler in every process.", url_for("dashboard.processes"))


async def resume_scheduler() -> Response:
    await _service().resume_scheduler(_actor())
    return _done("Resumed the scheduler in every process.", url_for("dashboard.processes"))


ROUTES: list[tuple[str, Callable[..., Any], list[str]]] = [
    ("/login", login, ["GET", "POST"]),
    ("/logout", logout, ["POST"]),
    ("/", jobs, ["GET"]),
    ("/jobs/<job_id>", job, ["GET"]),
    ("/jobs/<job_id>/delete", confirm_delete, ["GET"]),
    ("/jobs/<job_id>/delete", delete_job, ["POST"]),
    ("/jobs/<job_id>/pause", pause_job, ["POST"]),
    ("/jobs/<job_id>/resume", resume_job, ["POST"]),
    ("/jobs/<job_id>/run", run_job, ["POST"]),
    ("/runs", runs, ["GET"]),
    ("/processes", processes, ["GET"]),
    ("/scheduler/pause", pause_scheduler, ["POST"]),
    ("/scheduler/resume", resume_scheduler, ["POST"]),
]


# -- errors --------------------------------------------------------------------------


def _http_error(exc: HTTPException) -> Response:
    text = exc.description or exc.name
    if _wants_json():
        return _json_message(text, exc.code or 500)
    return _message(
        exc.name, text, exc.code or 500, (url_for("dashboard.jobs"), "Back to the jobs")
    )


def _error(exc: Exception) -> Response:
    """Our errors as a message (back on the job page for a refused action); others as 500."""
    if not isinstance(exc, AsyncAppError):
        log.exception("unexpected error in %s %s", request.method, request.path)
        return _message("Error", "Internal error; the details are in the server log.", 500)
    status = next((code for kind, code in STATUS if isinstance(exc, kind)), 400)
    text = str(exc)
    if isinstance(exc, InvalidJob):
        text = "; ".join(f"{error['field']}: {error['message']}" for error in exc.errors)
    if _wants_json():
        response = _json_message(text, status)
    elif request.method == "POST" and not isinstance(exc, JobNotFound | DatabaseUnavailable):
        _flash(text, "error")
        job_id = (request.view_args or {}).get("job_id")
        target = url_for("dashboard.job", job_id=job_id) if job_id else url_for("dashboard.jobs")
        response = _see_other(target)
    else:
        response = _message(TITLES.get(status, "Not done"), text, status, _to_jobs())
    if isinstance(exc, DatabaseUnavailable):
        response.headers["Retry-After"] = str(exc.retry_after)
    return response
