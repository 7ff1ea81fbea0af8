"""The dashboard: see and steer the jobs in a browser, under ``/dashboard``.

Pages, server-rendered with Jinja (templates in ``asyncapp/templates/dashboard``,
CSS and one small script in ``asyncapp/static``, served by the package; nothing
is built, nothing comes from another site):

- ``/dashboard/``: counts of jobs per state (each a filter), then the jobs,
  paged, filtered, counted and sorted in the database;
- ``/dashboard/jobs/<id>``: a job's state, recent runs with a chart of their
  durations and start lateness, next fire times (none for a broken job),
  settings and change history;
- ``/dashboard/runs``: runs of every job, by status, time window and part of
  the job id;
- ``/dashboard/processes``: the live processes and the scheduler's state.

Every page carries a banner while the scheduler is paused.  Each page marks
parts of itself as live regions; the script asks the same URL with ``?live=1``
every two seconds and gets those parts as JSON (``{"regions": {id: {"html",
"hash"}}}``), rendered by the same templates, and swaps in those whose hash
changed, keeping scroll, focus, open sections and the rows under the pointer.
Actions (pause with a note, resume, run now, delete after a confirmation
page, scheduler pause after one and resume) are
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
from asyncapp.constants import JOB_FILTERS, JOB_SORTS, RUN_STATUSES, JobFilter, JobSort
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
    url_with,
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
    address = request.remote_addr or "unknown"
    wait = state().logins.wait(address)
    if wait:
        seconds = math.ceil(wait)
        text = f"Too many login attempts from your address; try again in {seconds} s."
        response = render("login.html", error=text, status=429)
        response.headers["Retry-After"] = str(seconds)
        return response
    if not token_matches(request.form.get("token", ""), configured):
        state().logins.add(address)  # only failures count: a right token is no attack
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
    asked = request.args.get("sort")
    sort = cast(JobSort, asked) if asked in JOB_SORTS else "next"
    descending = request.args.get("dir") == "desc"
    number = _page_number()
    jobs_service = service()
    listing = await jobs_service.job_page(
        search=search or None,
        state=chosen,
        limit=PAGE_SIZE,
        offset=(number - 1) * PAGE_SIZE,
        sort=sort,
        descending=descending,
    )
    pager = _pager(number, listing["total"])
    if number > pager["pages"] and request.args.get("live") != "1":
        return see_other(url_with(page=pager["pages"] if pager["pages"] > 1 else None))
    return await page(
        "jobs.html",
        regions={"job-counts": "_job_counts.html", "jobs-table": "_jobs_table.html"},
        listing=listing,
        counts=await jobs_service.job_counts(),
        pager=pager,
        search=search,
        state=chosen,
        sort=sort,
        descending=descending,
        sorts=JOB_SORTS,
        filters=JOB_FILTERS,
        nav="jobs",
    )


async def job(job_id: str) -> Response:
    jobs_service = service()
    found = await jobs_service.get_job(job_id)
    recent = await jobs_service.list_runs(job_id, limit=RECENT_RUNS)
    changes = await jobs_service.job_changes(job_id, limit=RECENT_CHANGES)
    upcoming: list[str] = []
    upcoming_error = None
    if not found["broken"]:  # a broken job never fires: its times would mislead
        try:
            upcoming = (await jobs_service.upcoming(job_id, UPCOMING))["times"]
        except InvalidJob as exc:
            upcoming_error = "; ".join(item["message"] for item in exc.errors)
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
        zone=_own_zone(found),
        runs=recent,
        manual=await jobs_service.manual_runs(job_id),
        chart=run_chart(recent["runs"]),
        changes=changes,
        upcoming=upcoming,
        upcoming_error=upcoming_error,
        nav="jobs",
    )


def _own_zone(job: dict[str, Any]) -> str | None:
    """The time zone a cron or date job's times are read in, when it is not UTC."""
    zone = job.get("timezone") if job.get("trigger") in ("cron", "date") else None
    return zone if isinstance(zone, str) and zone not in ("UTC", "Etc/UTC") else None


async def runs() -> Response:
    status = request.args.get("status")
    status = status if status in RUN_STATUSES else None
    window = request.args.get("window")
    window = window if window in WINDOWS else None
    job_part = request.args.get("job", "").strip()[:200] or None
    since = datetime.now(UTC) - WINDOWS[window][1] if window else None
    number = _page_number()
    listing = await service().list_runs(
        None, status, PAGE_SIZE, (number - 1) * PAGE_SIZE, since=since, job_contains=job_part
    )
    pager = _pager(number, listing["total"])
    if number > pager["pages"] and request.args.get("live") != "1":
        return see_other(url_with(page=pager["pages"] if pager["pages"] > 1 else None))
    return await page(
        "runs.html",
        regions={"runs-table": "_runs_page_table.html"},
        listing=listing,
        pager=pager,
        manual=set(),
        run_status=status,
        statuses=RUN_STATUSES,
        window=window,
        windows=WINDOWS,
        job_id=job_part,
        nav="runs",
    )


async def processes() -> Response:
    runtime = state().ext.runtime
    return await page(
        "processes.html",
        regions={"processes": "_processes.html"},
        cluster=await service().processes(),
        counts=await service().job_counts(),
        database="unavailable" if runtime.store.down_since is not None else "ok",
        lag=metrics.loop_lag_summary(),
        nav="processes",
    )


async def confirm_delete(job_id: str) -> Response:
    found = await service().get_job(job_id)
    return await page("confirm_delete.html", regions={}, job=found, nav="jobs")


async def confirm_pause_scheduler() -> Response:
    return await page(
        "confirm_pause.html", regions={}, counts=await service().job_counts(), nav="processes"
    )


def _page_number() -> int:
    try:
        return max(1, min(int(request.args.get("page", "1")), 10**6))
    except ValueError:
        return 1


def _pager(page: int, total: int) -> dict[str, Any]:
    """Where a page is among ``total`` rows, and the page numbers to link: the first,
    the last, and two either side of this one (None where numbers are left out)."""
    pages = max(1, math.ceil(total / PAGE_SIZE))
    first = (page - 1) * PAGE_SIZE + 1 if total else 0
    near = sorted({1, pages, *range(max(1, page - 2), min(pages, page + 2) + 1)})
    numbers: list[int | None] = []
    for number in near:
        if numbers and number - (numbers[-1] or 0) > 1:
            numbers.append(None)
        numbers.append(number)
    return {
        "page": page,
        "pages": pages,
        "first": first,
        "last": min(page * PAGE_SIZE, total),
        "numbers": numbers,
    }


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
    ("/scheduler/pause", confirm_pause_scheduler, ["GET"]),
    ("/scheduler/pause", pause_scheduler, ["POST"]),
    ("/scheduler/resume", resume_scheduler, ["POST"]),
]
