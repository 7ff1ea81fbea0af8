"""The OpenAPI 3.1 document of the management API, generated, never hand-written.

Request bodies and query strings are described by the very pydantic models
that validate them (:mod:`asyncapp.service.schemas`); responses by the models below;
paths, methods and status codes by the route table in :mod:`asyncapp.faces.api`,
which also registers the Flask routes.  So a route cannot be served without
being documented, nor documented with a body other than the one it checks.

Why not a library: flask-openapi3 needs its own ``OpenAPI`` class in place of
``flask.Flask`` (``create_app`` must return a plain Flask app and users add
routes to it).  spectree would fit plain Flask, but what it adds here is the
document, which pydantic already emits as JSON Schema 2020-12 (embedded as is
by OpenAPI 3.1); its validation would still need our error format
(Flask-APScheduler's ``error_message``), the flat-trigger folding and the
body checks done before parsing, and its support for ``async def`` views is
one more thing to verify and keep verified.  A ~100-line function keeps the
one source of truth without a dependency.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from asyncapp.constants import RunStatus, SchedulerState
from asyncapp.service.schemas import (
    JobCreate,
    JobUpdate,
    PageQuery,
    PauseRequest,
    RunQuery,
    ShutdownRequest,
    UpcomingQuery,
)

REF_TEMPLATE = "#/components/schemas/{model}"


class _Open(BaseModel):
    # Responses may gain fields; clients and the document must tolerate that.
    model_config = ConfigDict(extra="allow")


class FieldError(_Open):
    field: str
    message: str


class ErrorResponse(_Open):
    """Every error body: Flask-APScheduler's ``error_message`` plus per-field errors."""

    error_message: str
    errors: list[FieldError] = []


class SchedulerInfo(_Open):
    """Flask-APScheduler's scheduler info plus ``state``."""

    current_host: str
    allowed_hosts: list[str]
    running: bool
    state: SchedulerState
    jobs: int | None = None
    broken_jobs: int | None = None
    runs_in_progress: int | None = None
    process: dict[str, Any] | None = None
    processes: list[dict[str, Any]] | None = None


class Run(_Open):
    """One run of a job, from the run history. Date-times are ISO 8601 strings."""

    id: str
    job_id: str
    scheduled_for: str | None
    started_at: str | None
    ended_at: str | None
    status: RunStatus
    error_type: str | None
    error_message: str | None
    node: str | None
    attempt: int
    process_id: str | None = None
    reason: str | None = None
    missed_until: str | None = None
    attempts: list[dict[str, Any]] | None = None


class RunPage(_Open):
    """A page of runs, newest first; ``total`` counts all that match the filter."""

    runs: list[Run]
    total: int
    limit: int
    offset: int


class Job(_Open):
    """A job as Flask-APScheduler's ``job_to_dict`` shows it, plus our fields.

    Trigger fields appear flat and only those that apply; date-times are ISO
    8601 strings.  ``run`` is present only in the answer to ``/run``.
    """

    id: str
    name: str | None
    func: str
    args: list[Any]
    kwargs: dict[str, Any]
    trigger: str
    run_date: str | None = None
    start_date: str | None = None
    end_date: str | None = None
    weeks: float | None = None
    days: float | None = None
    hours: float | None = None
    minutes: float | None = None
    seconds: float | None = None
    year: str | None = None
    month: str | None = None
    day: str | None = None
    week: str | None = None
    day_of_week: str | None = None
    hour: str | None = None
    minute: str | None = None
    second: str | None = None
    misfire_grace_time: int | None = None
    max_instances: int | None = None
    next_run_time: str | None = None
    coalesce: bool | None = None
    jitter: float | None = None
    timezone: str | None = None
    rerun_interrupted: bool | None = None
    paused: bool | None = None
    note: str | None = None
    version: int | None = None
    broken: bool | None = None
    run: Run | None = None


class Change(_Open):
    """One change to a job or the scheduler: when, through which face, from where, what."""

    id: int
    at: str
    job_id: str | None
    action: str
    source: str
    client: str | None
    detail: dict[str, Any]


class ChangePage(_Open):
    """A page of changes, newest first."""

    changes: list[Change]
    total: int
    limit: int
    offset: int


class Upcoming(_Open):
    """A job's next fire times, soonest first: ISO 8601 strings in the trigger's time zone,
    each with the UTC offset in force at that instant."""

    times: list[str]


ERROR_DESCRIPTIONS = {
    400: "The body is not valid JSON",
    401: "Missing or wrong bearer token",
    403: "The management API is off: no ASYNCAPP_API_TOKEN is configured",
    404: "No job with this id",
    405: "Method not allowed",
    409: "A job with this id already exists, or (run) max_instances runs are in progress",
    413: "The body is larger than ASYNCAPP_MAX_BODY_BYTES",
    415: "The body is not application/json",
    422: "The body or query is invalid; see errors",
    503: "The database is unavailable (nothing was changed; retry after Retry-After "
    "seconds), or the runtime is not running in this process",
}


#: The ``Idempotency-Key`` header, as the operations that take it document it.
IDEMPOTENCY_KEY_PARAMETER: dict[str, Any] = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "Any string of 1-255 printable ASCII characters, new for each request. "
    "A retry with the same key gets the first answer again (kept for a day) and changes "
    "nothing more; the same key with another request is refused with 422.",
    "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[ -~]+$"},
}


@dataclass(frozen=True)
class Operation:
    """One route: enough to register it with Flask and to document it."""

    method: Literal["GET", "POST", "PATCH", "DELETE"]
    path: str  # relative to the API prefix, Flask syntax: /jobs/<job_id>
    name: str  # Flask endpoint and OpenAPI operationId
    summary: str
    status: int = 200
    response: type[BaseModel] | None = None
    many: bool = False
    body: type[BaseModel] | None = None
    body_required: bool = False
    query: type[BaseModel] | None = None
    errors: tuple[int, ...] = field(default=())
    prefixed: bool = True
    #: The Flask view serving it.
    view: Callable[..., Any] | None = None
    #: The success response's type when it is not JSON.
    content_type: str | None = None
    #: It takes an ``Idempotency-Key`` header: a retry with the same key gets the first answer.
    idempotent: bool = False

    def url(self, prefix: str) -> str:
        return (prefix if self.prefixed else "") + self.path

    def openapi_path(self, prefix: str) -> str:
        return self.url(prefix).replace("<", "{").replace(">", "}")

    def error_codes(self) -> list[int]:
        # 413 everywhere: the adapter caps every body before routing.
        codes = {401, 403, 413, 503, *self.errors}
        if self.body is not None:
            codes |= {400, 413, 415, 422}
        if self.query is not None:
            codes.add(422)
        if "<job_id>" in self.path:
            codes.add(404)
        return sorted(codes)


def build_document(
    operations: list[Operation], *, prefix: str, version: str, functions: list[str]
) -> dict[str, Any]:
    """The OpenAPI 3.1 document for ``operations`` served under ``prefix``.

    ``functions`` (the registered ``@task`` references) become the enum of
    ``JobCreate.func``, so clients and fuzzers see what may be scheduled.
    """
    requests: list[type[BaseModel]] = [
        JobCreate,
        JobUpdate,
        ShutdownRequest,
        PauseRequest,
        RunQuery,
        PageQuery,
        UpcomingQuery,
    ]
    responses: list[type[BaseModel]] = [
        ErrorResponse,
        SchedulerInfo,
        Job,
        RunPage,
        ChangePage,
        Upcoming,
    ]
    models: list[tuple[type[BaseModel], JsonSchemaMode]] = [(m, "validation") for m in requests]
    models += [(m, "serialization") for m in responses]
    keys, top = models_json_schema(models, ref_template=REF_TEMPLATE)
    components: dict[str, Any] = top.get("$defs", {})
    if functions:
        components["JobCreate"]["properties"]["func"]["enum"] = sorted(functions)

    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        paths.setdefault(op.openapi_path(prefix), {})[op.method.lower()] = _operation(op, keys)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "asyncapp management API",
            "version": version,
            "description": "Flask-APScheduler-compatible job management. See docs/api.md.",
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearerAuth": []}],
    }


def _operation(op: Operation, keys: dict[Any, Any]) -> dict[str, Any]:
    doc: dict[str, Any] = {"operationId": op.name, "summary": op.summary}
    params = []
    if "<job_id>" in op.path:
        params.append(
            {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}
        )
    if op.query is not None:
        schema = op.query.model_json_schema(ref_template=REF_TEMPLATE)
        required = set(schema.get("required", []))
        for name, prop in schema["properties"].items():
            params.append(
                {"name": name, "in": "query", "required": name in required, "schema": prop}
            )
    if op.idempotent:
        params.append(IDEMPOTENCY_KEY_PARAMETER)
    if params:
        doc["parameters"] = params
    if op.body is not None:
        doc["requestBody"] = {
            "required": op.body_required,
            "content": {"application/json": {"schema": keys[(op.body, "validation")]}},
        }
    success: dict[str, Any] = {"description": "OK" if op.status != 204 else "Done, no content"}
    if op.content_type is not None:
        success["content"] = {op.content_type: {"schema": {"type": "string"}}}
    if op.response is not None:
        ref = keys[(op.response, "serialization")]
        schema = {"type": "array", "items": ref} if op.many else ref
        success["content"] = {"application/json": {"schema": schema}}
    error_ref = keys[(ErrorResponse, "serialization")]
    doc["responses"] = {str(op.status): success} | {
        str(code): {
            "description": ERROR_DESCRIPTIONS[code],
            "content": {"application/json": {"schema": error_ref}},
        }
        for code in op.error_codes()
    }
    return doc
