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
with ``?live=1`` every two seconds and gets those parts as
JSON (``{"regions": {id: {"html", "hash"}}}``), rendered by the same templates,
and swaps in those whose hash changed.  Actions (pause with a note, resume,
run now, delete after a confirmation page, scheduler pause and resume) are
POST forms that work without the script; with it, the job page sends them
without leaving the page.  Every action goes through :class:`JobService` as
``Actor("dashboard", <client address>)``, so the change history says
``dashboard``.  Login, session, CSRF, rate limit and headers:
:mod:`asyncapp.faces.dashboard.security`; what every request goes through, and rendering:
:mod:`asyncapp.faces.dashboard.pages`.

Views are ``async def`` and run on the server loop; the database work is off
it, in the service, and a page renders at most :data:`PAGE_SIZE` rows.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from flask import Blueprint, Flask, Response, request, url_for
from werkzeug.exceptions import HTTPException

from asyncapp import metrics
from asyncapp.constants import JOB_FILTERS, RUN_STATUSES, JobFilter
from asyncapp.errors import InvalidJob
from asyncapp.faces.dashboard.charts import run_chart
from asyncapp.faces.dashboard.pages import (
    BAD_FORM,
    PREFIX,
    Dashboard,
    actor,
    done,
    error,
    guard,
    helpers,
    http_error,
    message,
    page,
    render,
    save_session,
    security_headers,
    see_other,
    service,
    session,
    state,
    token,
)
from asyncapp.faces.dashboard.security import (
    DashboardSessions,
    SlidingWindow,
    csrf_matches,
    logged_in,
    login_mark,
    new_csrf_token,
    same_site_path,
    token_matches,
)
from asyncapp.faces.host import Host

PAGE_SIZE = 50
RECENT_RUNS = 30
RECENT_CHANGES = 20
UPCOMING = 5
WINDOWS = {
    "1h": ("the last hour", timedelta(hours=1)),
    "24h": ("the last 24 hours", timedelta(days=1)),
    "7d": ("the last 7 days", timedelta(days=7)),
    "30d": ("the last 30 days", timedelta(days=30)),
}


def init_dashboard(app: Flask, ext: Host) -> None:
    """Register the dashboard's pages on ``app`` under ``/dashboard``."""
    app.extensions["asyncapp_dashboard"] = Dashboard(
        ext, DashboardSessions(PREFIX, token), SlidingWindow()
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
    bp.before_request(guard)
    bp.after_request(save_session)
    bp.context_processor(helpers)
    bp.register_error_handler(HTTPException, http_error)
    bp.register_error_handler(Exception, error)
    app.register_blueprint(bp)
    # App-wide, so that routing errors under the prefix get them too.
    app.after_request(security_headers)


# -- login ---------------------------------------------------------------------------


def login() -> Response:
    configured = token()
    assert configured is not None  # the guard answered otherwise
    current = session()
    if request.method == "GET":
        if logged_in(current, configured):
            return see_other(_next_page())
        notice = "You are logged out." if request.args.get("out") else None
        return render("login.html", notice=notice)
    wait = state().logins.hit(request.remote_addr or "unknown")
    if wait:
        seconds = math.ceil(wait)
        text = f"Too many login attempts from your address; try again in {seconds} s."
        response = render("login.html", error=text, status=429)
        response.headers["Retry-After"] = str(seconds)
        return response
    if not token_matches(request.form.get("token", ""), configured):
        return render("login.html", error="Wrong token.", status=401)
    current.clear()  # a new session at every login: nothing set before it survives
    current.update(login=login_mark(configured), at=time.time(), csrf=new_csrf_token())
    return see_other(_next_page())


def logout() -> Response:
    current = session()
    if logged_in(current, token()) and not csrf_matches(current, request.form.get("csrf_token")):
        return message("Refused", BAD_FORM, 403)
    current.clear()
    return see_other(url_for("dashboard.login", out=1))


def _next_page() -> str:
    """Where to go after logging in: a dashboard page named in ``next``, else the jobs."""
    target = same_site_path(request.args.get("next", ""), PREFIX)
    return target if target is not None else url_for("dashboard.jobs")


# -- pages ---------------------------------------------------------------------------


async def jobs() -> Response:
    search = request.args.get("q", "").strip()[:200]
    wanted = request.args.get("state")
    chosen = cast(JobFilter, wanted) if wanted in JOB_FILTERS else None
    number = _page_number()
    listing = await service().job_page(
        search=search or None, state=chosen, limit=PAGE_SIZE, offset=(number - 1) * PAGE_SIZE
    )
    return await page(
        "jobs.html",
        regions={"jobs-table": "_jobs_table.html"},
        listing=listing,
        pager=_pager(number, listing["total"]),
        search=search,
        state=chosen,
        filters=JOB_FILTERS,
        nav="jobs",
    )


async def job(job_id: str) -> Response:
    jobs_service = service()
    found = await jobs_service.get_job(job_id)
    recent = await jobs_service.list_runs(job_id, limit=RECENT_RUNS)
    changes = await jobs_service.job_changes(job_id, limit=RECENT_CHANGES)
    try:
        upcoming, upcoming_error = (await jobs_service.upcoming(job_id, UPCOMING))["times"], None
    except InvalidJob as exc:
        upcoming, upcoming_error = [], "; ".join(item["message"] for item in exc.errors)
    return await page(
        "job.html",
        regions={
            "job-state": "_job_state.html",
            "job-actions": "_job_actions.html",
            "job-upcoming": "_job_upcoming.html",
            "job-runs": "_job_runs.html",
            "job-changes": "_job_changes.html",
        },
        job=found,
        runs=recent,
        chart=run_chart(recent["runs"]),
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
    number = _page_number()
    listing = await service().list_runs(
        job_id, status, PAGE_SIZE, (number - 1) * PAGE_SIZE, since=since
    )
    return await page(
        "runs.html",
        regions={"runs-table": "_runs_page_table.html"},
        listing=listing,
        pager=_pager(number, listing["total"]),
        run_status=status,
        statuses=RUN_STATUSES,
        window=window,
        windows=WINDOWS,
        job_id=job_id,
        nav="runs",
    )


async def processes() -> Response:
    runtime = state().ext.runtime
    return await page(
        "processes.html",
        regions={"processes": "_processes.html"},
        cluster=await service().processes(),
        database="unavailable" if runtime.db.down_since is not None else "ok",
        lag=metrics.loop_lag_summary(),
        nav="processes",
    )


async def confirm_delete(job_id: str) -> Response:
    found = await service().get_job(job_id)
    return await page("confirm_delete.html", job=found, nav="jobs")


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
    await service().pause_job(job_id, actor(), note)
    said = f" ({note})" if note else ""
    return done(f"Paused {job_id}{said}.", url_for("dashboard.job", job_id=job_id))


async def resume_job(job_id: str) -> Response:
    await service().resume_job(job_id, actor())
    return done(f"Resumed {job_id}.", url_for("dashboard.job", job_id=job_id))


async def run_job(job_id: str) -> Response:
    await service().run_job(job_id, actor())
    return done(f"Started a run of {job_id}.", url_for("dashboard.job", job_id=job_id))


async def delete_job(job_id: str) -> Response:
    await service().delete_job(job_id, actor())
    return done(f"Deleted {job_id}; its run history stays.", url_for("dashboard.jobs"))


async def pause_scheduler() -> Response:
    await service().pause_scheduler(actor())
    return done("Paused the scheduler in every process.", url_for("dashboard.processes"))


async def resume_scheduler() -> Response:
    await service().resume_scheduler(actor())
    return done("Resumed the scheduler in every process.", url_for("dashboard.processes"))


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
