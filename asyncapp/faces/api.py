"""The management HTTP API: Flask-APScheduler's REST API, made safe, plus history.

Paths, methods, success codes and job JSON match Flask-APScheduler 1.13
(``/scheduler``, ``/scheduler/jobs``, ``/scheduler/jobs/<job_id>/run`` ...), so
scripts written for it keep working.  What it gets wrong is fixed here:

- ``func`` may only name a registered ``@task`` function (it imported any);
- bad input is a 4xx JSON error with per-field ``errors`` (it was a 500 with
  the exception text); no response carries a traceback or internal text;
- every route needs ``Authorization: Bearer <ASYNCAPP_API_TOKEN>``;
- ``/run`` fires the job on the server loop through the scheduler, recorded in
  run history, and answers without waiting for it (it called the function in
  the request and never awaited a coroutine);
- run history at ``/scheduler/runs`` and ``/scheduler/jobs/<job_id>/runs``.

:data:`OPERATIONS` is the route table: :func:`init_api` registers each entry
as a Flask route and :mod:`asyncapp.faces.openapi` documents the same entries, so
``/openapi.json`` always describes what is served.  Views are ``async def``:
they run on the server loop, where the scheduler lives.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from importlib import metadata
from typing import Any

from flask import Blueprint, Flask, Response, current_app, request
from werkzeug.exceptions import (
    BadRequest,
    HTTPException,
    MethodNotAllowed,
    NotFound,
    UnsupportedMediaType,
)

from asyncapp import metrics
from asyncapp.errors import (
    AsyncAppError,
    DatabaseUnavailable,
    InvalidJob,
    UnknownFunction,
)
from asyncapp.faces.host import Host, host, status_of
from asyncapp.faces.openapi import (
    ChangePage,
    ErrorResponse,
    Job,
    Operation,
    RunPage,
    SchedulerInfo,
    Upcoming,
    build_document,
)
from asyncapp.model.change import Actor
from asyncapp.model.tasks import registry
from asyncapp.service.jobs import JobService
from asyncapp.service.schemas import (
    JobCreate,
    JobUpdate,
    PageQuery,
    PauseRequest,
    RunQuery,
    ShutdownRequest,
    UpcomingQuery,
    is_safe_text,
)
from asyncapp.service.validation import (
    parse_job_create,
    parse_job_update,
    parse_page_query,
    parse_pause,
    parse_run_query,
    parse_shutdown,
    parse_upcoming_query,
)

log = logging.getLogger("asyncapp.api")

BLUEPRINT = "scheduler"  # endpoints are scheduler.<name>, as in Flask-APScheduler
MAX_PATH_ID = 1024


def init_api(app: Flask, ext: Host) -> None:
    """Register the management API on ``app`` under ``ext.settings.api_prefix``.

    Every route, ``/openapi.json`` included, requires the bearer token; with
    none configured every route answers 403 saying how to set one.  Errors
    under the API's paths are JSON: ``{"error_message": ..., "errors": [...]}``.
    """
    prefix = ext.settings.api_prefix
    bp = Blueprint(BLUEPRINT, __name__)
    for op in OPERATIONS:
        bp.add_url_rule(op.url(prefix), op.name, op.view, methods=[op.method])
    bp.before_request(_guard)
    bp.register_error_handler(HTTPException, _http_error)
    bp.register_error_handler(Exception, _unexpected_error)
    app.register_blueprint(bp)
    # Routing errors (unknown path, wrong method) happen outside the blueprint.
    for code in (404, 405):
        _json_routing_errors(app, code, prefix)


def _guard() -> Response | None:
    """Cap the body and check the token before any view code runs."""
    settings = host().settings
    request.max_content_length = settings.max_body_bytes
    if request.endpoint == f"{BLUEPRINT}.metrics" and settings.metrics_public:
        return None
    token = settings.api_token
    if token is None:
        return _error(
            403,
            "The management API is off because no token is configured. Set the "
            "ASYNCAPP_API_TOKEN environment variable and send 'Authorization: Bearer <token>'.",
        )
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    expected = token.get_secret_value().encode()
    # compare_digest on bytes: constant time, and any header text is accepted.
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
        response = _error(
            401, "Missing or wrong token: send 'Authorization: Bearer <ASYNCAPP_API_TOKEN>'."
        )
        response.headers["WWW-Authenticate"] = 'Bearer realm="asyncapp"'
        return response
    return None


def _service() -> JobService:
    return host().service()


def _actor() -> Actor:
    return Actor("api", request.remote_addr)


def _json(data: Any, status: int = 200) -> Response:
    body = json.dumps(data, ensure_ascii=False, default=_json_default)
    return current_app.response_class(body, status=status, mimetype="application/json")


async def _json_off_loop(data: Any) -> Response:
    """:func:`_json` for large answers: serialised in a thread, a slice at a time.

    10,000 jobs take about 60 ms to serialise.  On the loop that would delay every
    request and job of the process by as much; in a thread as one ``json.dumps``
    call it would too, because the C encoder holds the GIL for the whole call.
    Slices of :data:`SLICE` items let the loop take the GIL between them.
    """
    body = await asyncio.to_thread(_dumps_in_slices, data)
    return current_app.response_class(body, status=200, mimetype="application/json")


SLICE = 200


def _dumps_in_slices(data: Any) -> str:
    if not isinstance(data, list) or len(data) <= SLICE:
        return json.dumps(data, ensure_ascii=False, default=_json_default)
    parts = (
        json.dumps(data[start : start + SLICE], ensure_ascii=False, default=_json_default)[1:-1]
        for start in range(0, len(data), SLICE)
    )
    return "[" + ",".join(parts) + "]"


def _json_default(value: Any) -> Any:
    isoformat = getattr(value, "isoformat", None)
    if isoformat is not None:
        return isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _error(status: int, message: str, errors: list[dict[str, str]] | None = None) -> Response:
    body = ErrorResponse.model_validate({"error_message": message, "errors": errors or []})
    return _json(body.model_dump(), status)


def _no_content() -> Response:
    response = current_app.response_class(status=204)
    del response.headers["Content-Type"]  # nothing to describe
    return response


def _body() -> Any:
    """The request's JSON body.

    A missing Content-Type is read as JSON (Flask-APScheduler parsed with
    ``force=True``); any other non-JSON type is 415.  An empty body is 422;
    invalid JSON, NaN and nesting too deep for the parser are 400.
    """
    raw = request.get_data(cache=True)  # raises 413 past max_content_length
    mimetype = request.mimetype
    if mimetype and mimetype != "application/json" and not mimetype.endswith("+json"):
        raise UnsupportedMediaType("The body must be JSON, sent as Content-Type: application/json.")
    if not raw.strip():
        raise InvalidJob([{"field": "body", "message": "a JSON object is required"}])
    try:
        return json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        raise BadRequest("The body is not valid JSON.") from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _job_id(job_id: str) -> str:
    # Ids no job can have are answered without touching the database (PostgreSQL rejects NUL).
    if len(job_id) > MAX_PATH_ID or not is_safe_text(job_id):
        raise NotFound("No job with that id.")
    return job_id


async def get_scheduler_info() -> Response:
    return _json(await _service().scheduler_info())


async def pause_scheduler() -> Response:
    await _service().pause_scheduler(_actor())
    return _no_content()


async def resume_scheduler() -> Response:
    await _service().resume_scheduler(_actor())
    return _no_content()


async def start_scheduler() -> Response:
    await _service().start_scheduler(_actor())
    return _no_content()


async def shutdown_scheduler() -> Response:
    # ``wait`` is accepted for Flask-APScheduler clients; running jobs always go on.
    if request.get_data(cache=True).strip():  # the body is optional, but checked when sent
        parse_shutdown(_body())
    await _service().shutdown_scheduler(_actor())
    return _no_content()


async def get_jobs() -> Response:
    body = await _service().list_jobs_json()
    return current_app.response_class(body, status=200, mimetype="application/json")


async def add_job() -> Response:
    spec = parse_job_create(_body())
    return _json(await _service().add_job(spec, _actor()))


async def get_job(job_id: str) -> Response:
    return _json(await _service().get_job(_job_id(job_id)))


async def update_job(job_id: str) -> Response:
    changes = parse_job_update(_job_id(job_id), _body())
    return _json(await _service().update_job(job_id, changes, _actor()))


async def delete_job(job_id: str) -> Response:
    await _service().delete_job(_job_id(job_id), _actor())
    return _no_content()


async def pause_job(job_id: str) -> Response:
    note = parse_pause(_body()) if request.get_data(cache=True).strip() else None
    return _json(await _service().pause_job(_job_id(job_id), _actor(), note))


async def resume_job(job_id: str) -> Response:
    return _json(await _service().resume_job(_job_id(job_id), _actor()))


async def run_job(job_id: str) -> Response:
    service = _service()
    run = await service.run_job(_job_id(job_id), _actor())
    # Flask-APScheduler answers with the job; the run rides along for us.
    return _json({**await service.get_job(job_id), "run": run})


async def get_job_runs(job_id: str) -> Response:
    query = parse_run_query(request.args.to_dict())
    page = await _service().list_runs(_job_id(job_id), query.status, query.limit, query.offset)
    return await _json_off_loop(page)


async def get_runs() -> Response:
    query = parse_run_query(request.args.to_dict())
    page = await _service().list_runs(None, query.status, query.limit, query.offset)
    return await _json_off_loop(page)


async def get_job_changes(job_id: str) -> Response:
    query = parse_page_query(request.args.to_dict())
    return _json(await _service().job_changes(_job_id(job_id), query.limit, query.offset))


async def metrics_view() -> Response:
    ext = host()
    if ext.runtime.started:
        ext.runtime.update_gauges()
    body, content_type = await asyncio.to_thread(metrics.render)
    return current_app.response_class(body, status=200, content_type=content_type)


async def get_job_upcoming(job_id: str) -> Response:
    query = parse_upcoming_query(request.args.to_dict())
    return _json(await _service().upcoming(_job_id(job_id), query.count, query.after))


async def openapi() -> Response:
    document = build_document(
        OPERATIONS, prefix=host().settings.api_prefix, version=_version(), functions=registry.refs()
    )
    return _json(document)


def _version() -> str:
    try:
        return metadata.version("Flask-AsyncApp")
    except metadata.PackageNotFoundError:
        return "0"


OPERATIONS: list[Operation] = [
    Operation(
        "GET",
        "",
        "get_scheduler_info",
        "Scheduler state",
        response=SchedulerInfo,
        view=get_scheduler_info,
    ),
    Operation(
        "POST",
        "/pause",
        "pause_scheduler",
        "Pause all job processing",
        status=204,
        view=pause_scheduler,
    ),
    Operation(
        "POST",
        "/resume",
        "resume_scheduler",
        "Resume job processing",
        status=204,
        view=resume_scheduler,
    ),
    Operation(
        "POST", "/start", "start_scheduler", "Start the scheduler", status=204, view=start_scheduler
    ),
    Operation(
        "POST",
        "/shutdown",
        "shutdown_scheduler",
        "Stop the scheduler",
        status=204,
        body=ShutdownRequest,
        view=shutdown_scheduler,
    ),
    Operation("GET", "/jobs", "get_jobs", "List jobs", response=Job, many=True, view=get_jobs),
    Operation(
        "POST",
        "/jobs",
        "add_job",
        "Add a job",
        response=Job,
        body=JobCreate,
        body_required=True,
        errors=(409,),
        view=add_job,
    ),
    Operation(
        "GET", "/jobs/<job_id>", "get_job", "Get a job", response=Job, errors=(404,), view=get_job
    ),
    Operation(
        "PATCH",
        "/jobs/<job_id>",
        "update_job",
        "Change a job",
        response=Job,
        body=JobUpdate,
        body_required=True,
        errors=(404,),
        view=update_job,
    ),
    Operation(
        "DELETE",
        "/jobs/<job_id>",
        "delete_job",
        "Remove a job",
        status=204,
        errors=(404,),
        view=delete_job,
    ),
    Operation(
        "POST",
        "/jobs/<job_id>/pause",
        "pause_job",
        "Pause a job, optionally with a note saying why",
        response=Job,
        body=PauseRequest,
        errors=(422,),
        view=pause_job,
    ),
    Operation(
        "POST",
        "/jobs/<job_id>/resume",
        "resume_job",
        "Resume a job",
        response=Job,
        errors=(422,),
        view=resume_job,
    ),
    Operation(
        "POST",
        "/jobs/<job_id>/run",
        "run_job",
        "Fire a job now; the answer carries the run",
        response=Job,
        errors=(409, 422),
        view=run_job,
    ),
    Operation(
        "GET",
        "/jobs/<job_id>/runs",
        "get_job_runs",
        "Run history of a job",
        response=RunPage,
        query=RunQuery,
        view=get_job_runs,
    ),
    Operation(
        "GET",
        "/runs",
        "get_runs",
        "Run history of all jobs",
        response=RunPage,
        query=RunQuery,
        view=get_runs,
    ),
    Operation(
        "GET",
        "/jobs/<job_id>/changes",
        "get_job_changes",
        "Change history of a job: who changed what, when, from where",
        response=ChangePage,
        query=PageQuery,
        view=get_job_changes,
    ),
    Operation(
        "GET",
        "/jobs/<job_id>/upcoming",
        "get_job_upcoming",
        "The job's next fire times, as the scheduler computes them (paused jobs too)",
        response=Upcoming,
        query=UpcomingQuery,
        view=get_job_upcoming,
    ),
    Operation(
        "GET", "/openapi.json", "openapi", "This OpenAPI document", prefixed=False, view=openapi
    ),
    Operation(
        "GET",
        "/metrics",
        "metrics",
        "Prometheus metrics (text format); open without the token if ASYNCAPP_METRICS_PUBLIC",
        prefixed=False,
        view=metrics_view,
        content_type="text/plain; version=0.0.4",
    ),
]


def _http_error(exc: HTTPException) -> Response:
    response = _error(exc.code or 500, exc.description or exc.name)
    if isinstance(exc, MethodNotAllowed) and exc.valid_methods:
        response.headers["Allow"] = ", ".join(exc.valid_methods)
    return response


def _unexpected_error(exc: Exception) -> Response:
    if isinstance(exc, DatabaseUnavailable):
        log.warning("%s %s: %s (%s)", request.method, request.path, exc, exc.detail)
        response = _app_error(exc)
        response.headers["Retry-After"] = str(exc.retry_after)
        return response
    if isinstance(exc, AsyncAppError):
        return _app_error(exc)
    log.exception("unexpected error in %s %s", request.method, request.path)
    return _error(500, "Internal server error; the details are in the server log.")


def _app_error(exc: AsyncAppError) -> Response:
    status = status_of(exc)
    if isinstance(exc, InvalidJob):
        return _error(status, "Invalid request; see errors.", exc.errors)
    if isinstance(exc, UnknownFunction):
        return _error(status, str(exc), [{"field": "func", "message": str(exc)}])
    return _error(status, str(exc))


def _json_routing_errors(app: Flask, code: int, prefix: str) -> None:
    """JSON for ``code`` under the API's paths; elsewhere defer to what was there."""
    exc_class = NotFound if code == 404 else MethodNotAllowed
    previous = app.error_handler_spec[None][code].get(exc_class)

    def handle(exc: HTTPException) -> Any:
        path = request.path
        if path in ("/openapi.json", "/metrics") or path == prefix or path.startswith(prefix + "/"):
            return _http_error(exc)
        return previous(exc) if previous is not None else exc

    app.register_error_handler(code, handle)
