"""How the dashboard's requests are handled, whatever the page: the pieces under its views.

- :class:`Dashboard`, the state kept per app, and accessors for the request
  (:func:`service`, :func:`session`, :func:`actor`...);
- :func:`guard`, run before every view: no token configured, not logged in,
  or a POST without the session's CSRF token, and the view never runs;
- :func:`render`: a page, or with ``?live=1`` only its live regions as JSON
  (``{"regions": {id: {"html", "hash"}}}``), rendered by the same templates,
  so the script can swap in exactly the parts whose hash changed; :func:`page`
  adds the scheduler banner (paused: by whom, since when) to every page's;
- answers: :func:`done` for actions (JSON for the script, else a redirect
  with a message), :func:`message` pages, and the error handlers, which turn
  our exceptions into the API's status codes with a readable message;
- :func:`security_headers` for every response under :data:`PREFIX`.

What each check means and why it is safe: :mod:`asyncapp.faces.dashboard.security`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from flask import Flask, Response, current_app, g, jsonify, render_template, request, url_for
from flask.sessions import SecureCookieSession, SessionMixin
from markupsafe import Markup
from werkzeug.exceptions import HTTPException

from asyncapp.constants import MISSED_REASONS
from asyncapp.errors import AsyncAppError, DatabaseUnavailable, InvalidJob, JobNotFound
from asyncapp.faces.dashboard.security import (
    HEADERS,
    DashboardSessions,
    SlidingWindow,
    csrf_matches,
    logged_in,
)
from asyncapp.faces.host import Host, status_of
from asyncapp.faces.humanize import (
    describe_trigger,
    format_duration,
    format_moment,
    format_utc,
    one_line,
    run_duration,
    start_lateness,
    trigger_spec,
)
from asyncapp.model.change import Actor
from asyncapp.service.jobs import JobService

log = logging.getLogger("asyncapp.dashboard")

PREFIX = "/dashboard"
#: How often a page asks for its live regions, in milliseconds.
POLL_MS = 2000
#: Forms carry a note at most; anything larger is not from the dashboard.
MAX_FORM_BYTES = 16 * 1024
DASHBOARD_OFF = (
    "The dashboard is off because no token is configured. Set the ASYNCAPP_API_TOKEN "
    "environment variable (a long random string) where the server runs, restart it, "
    "and log in here with that token."
)
BAD_FORM = "This form is out of date or did not come from the dashboard; reload the page."
TITLES = {401: "Not logged in", 403: "Refused", 404: "Not found", 409: "Busy", 503: "Unavailable"}


@dataclass
class Dashboard:
    """What the dashboard keeps per app.

    It holds the :class:`Host` it was registered by: ``app.extension()``
    would give the same, typed, but ``app`` imports this module.
    """

    ext: Host
    sessions: DashboardSessions
    logins: SlidingWindow
    compiled: bool = False


# -- the request ---------------------------------------------------------------------


def state() -> Dashboard:
    found = current_app.extensions["asyncapp_dashboard"]
    assert isinstance(found, Dashboard)
    return found


def service() -> JobService:
    return state().ext.service()


def token() -> str | None:
    configured = state().ext.settings.api_token
    return None if configured is None else configured.get_secret_value()


def actor() -> Actor:
    return Actor("dashboard", request.remote_addr)


def session() -> SessionMixin:
    """The dashboard's session of this request, opened from its cookie on first use."""
    found = g.get("asyncapp_dashboard_session")
    if found is None:
        opened = state().sessions.open_session(current_app, request)
        found = g.asyncapp_dashboard_session = opened or SecureCookieSession()
    assert isinstance(found, SessionMixin)
    return found


def under_prefix(path: str) -> bool:
    return path == PREFIX or path.startswith(PREFIX + "/")


def wants_json() -> bool:
    return request.args.get("live") == "1" or request.accept_mimetypes.best == "application/json"


def guard() -> Response | None:
    """Before any view: a token must be configured, a login held, a POST's CSRF token right."""
    if request.endpoint == "dashboard.static":
        return None
    request.max_content_length = MAX_FORM_BYTES
    configured = token()
    if configured is None:
        return message("Dashboard off", DASHBOARD_OFF, 403)
    if request.endpoint in ("dashboard.login", "dashboard.logout"):
        return None
    current = session()
    if not logged_in(current, configured):
        if wants_json():
            return json_message("Your session ended: log in again.", 401)
        if request.method == "GET":
            return see_other(url_for("dashboard.login", next=request.full_path.rstrip("?")))
        return message("Not logged in", "Log in first.", 401, to_login())
    if request.method == "POST" and not csrf_matches(current, request.form.get("csrf_token")):
        return json_message(BAD_FORM, 403) if wants_json() else message("Refused", BAD_FORM, 403)
    return None


def save_session(response: Response) -> Response:
    opened = g.get("asyncapp_dashboard_session")
    if isinstance(opened, SessionMixin) and token() is not None:
        state().sessions.save_session(current_app, opened, response)
    return response


def security_headers(response: Response) -> Response:
    if under_prefix(request.path):
        response.headers.update(HEADERS)
    return response


def flash(text: str, kind: str = "ok") -> None:
    """A message for the next page this browser shows."""
    current = session()
    current["flash"] = [*current.get("flash", []), [kind, text]]


def _messages() -> list[list[str]]:
    current = session()
    return list(current.pop("flash", [])) if "flash" in current else []


def url_with(**changes: Any) -> str:
    """This page's URL with query arguments changed (None or "" removes one)."""
    args: dict[str, Any] = request.args.to_dict()
    args.pop("live", None)
    args.update(changes)
    args = {key: value for key, value in args.items() if value not in (None, "")}
    assert request.endpoint is not None
    return url_for(request.endpoint, **(request.view_args or {}), **args)


def helpers() -> dict[str, Any]:
    """What every dashboard template may call (a context processor of the blueprint only)."""
    return {
        "describe": lambda job: describe_trigger(trigger_spec(job)),
        "duration": format_duration,
        "run_duration": lambda run: format_duration(run_duration(run)),
        "lateness": lambda run: format_duration(start_lateness(run)),
        "utc": format_utc,
        "in_zone": format_moment,
        "one_line": one_line,
        "iso_epoch": lambda seconds: datetime.fromtimestamp(seconds, UTC).isoformat(),
        "spec": trigger_spec,
        "inf": math.inf,
        "csrf_token": lambda: session().get("csrf", ""),
        "messages": _messages,
        "url_with": url_with,
        "reasons": MISSED_REASONS,
        "scheduler_state": lambda: state().ext.runtime.health().get("state", "stopped"),
    }


# -- answers -------------------------------------------------------------------------


def render(
    template: str,
    *,
    regions: Mapping[str, str] | None = None,
    status: int = 200,
    **context: Any,
) -> Response:
    """``template`` with ``regions`` ({element id: partial template}) rendered into it;
    with ``?live=1``, only the regions, as JSON for the script."""
    parts = {
        region: render_template(f"dashboard/{name}", **context)
        for region, name in (regions or {}).items()
    }
    hashes = {region: _digest(html) for region, html in parts.items()}
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
    live_url = url_with(live=1) if parts else None
    html = render_template(
        f"dashboard/{template}", regions=wrapped, live_url=live_url, poll_ms=POLL_MS, **context
    )
    return current_app.response_class(html, status=status, mimetype="text/html")


async def page(template: str, *, regions: Mapping[str, str], **context: Any) -> Response:
    """:func:`render` for an async view, with the scheduler banner as a live region of
    every page; the templates are compiled off the loop the first time."""
    dashboard = state()
    if not dashboard.compiled:
        # The thread runs in a copy of this context, so current_app is this app there too.
        await asyncio.to_thread(warm_templates, current_app)
        dashboard.compiled = True
    status = await service().scheduler_status()
    return render(
        template,
        regions={"scheduler-banner": "_scheduler_banner.html", **regions},
        scheduler=status,
        **context,
    )


def warm_templates(app: Flask) -> None:
    """Compile the dashboard's templates (about 0.13 s, which would otherwise be spent on
    the loop by the first page view)."""
    loader = app.jinja_env.loader
    for name in loader.list_templates() if loader is not None else []:
        if name.startswith("dashboard/"):
            app.jinja_env.get_template(name)


def message(title: str, text: str, status: int, link: tuple[str, str] | None = None) -> Response:
    return render("message.html", title=title, text=text, status=status, link=link)


def json_message(text: str, status: int) -> Response:
    response = jsonify(ok=status < 400, message=text)
    response.status_code = status
    return response


def see_other(location: str) -> Response:
    response = current_app.response_class(status=303)
    response.headers["Location"] = location
    return response


def done(text: str, location: str) -> Response:
    """An action's answer: JSON for the script, else back to ``location`` with a message."""
    if wants_json():
        return json_message(text, 200)
    flash(text)
    return see_other(location)


def to_jobs() -> tuple[str, str]:
    return url_for("dashboard.jobs"), "Back to the jobs"


def to_login() -> tuple[str, str]:
    return url_for("dashboard.login"), "Log in"


def _digest(html: str) -> str:
    return hashlib.sha256(html.encode()).hexdigest()[:16]


# -- errors --------------------------------------------------------------------------


def http_error(exc: HTTPException) -> Response:
    text = exc.description or exc.name
    if wants_json():
        return json_message(text, exc.code or 500)
    return message(exc.name, text, exc.code or 500, to_jobs())


def error(exc: Exception) -> Response:
    """Our errors as a message (back on the job page for a refused action); others as 500."""
    if not isinstance(exc, AsyncAppError):
        log.exception("unexpected error in %s %s", request.method, request.path)
        return message("Error", "Internal error; the details are in the server log.", 500)
    status = status_of(exc)
    text = str(exc)
    if isinstance(exc, InvalidJob):
        text = "; ".join(f"{item['field']}: {item['message']}" for item in exc.errors)
    if wants_json():
        response = json_message(text, status)
    elif request.method == "POST" and not isinstance(exc, JobNotFound | DatabaseUnavailable):
        flash(text, "error")
        job_id = (request.view_args or {}).get("job_id")
        target = url_for("dashboard.job", job_id=job_id) if job_id else url_for("dashboard.jobs")
        response = see_other(target)
    else:
        response = message(TITLES.get(status, "Not done"), text, status, to_jobs())
    if isinstance(exc, DatabaseUnavailable):
        response.headers["Retry-After"] = str(exc.retry_after)
    return response
