"""Validated requests to service specs: what the API and the CLI hand to the service.

Promises:

- :func:`parse_job_create` / :func:`parse_job_update` return the service's
  job spec / changes dict (see ``asyncapp.service.jobs``) with a normalized trigger
  spec, or raise :class:`asyncapp.errors.InvalidJob` whose ``errors`` is a list
  of ``{"field": ..., "message": ...}``; no other exception escapes for any
  JSON value given to them.
- Messages are written here, in :mod:`asyncapp.service.schemas` or in
  :mod:`asyncapp.model.triggers`; they may quote a rejected trigger value but never
  internal state or exception text.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from asyncapp.constants import CRON_FIELDS, JOB_OPTIONS, SECONDS_PER, TRIGGER_NAMES, TriggerType
from asyncapp.errors import InvalidJob
from asyncapp.model.triggers import build_trigger, has_fire_time
from asyncapp.service.schemas import (
    ALL_TRIGGER_FIELDS,
    INTERVAL_FIELDS,
    MAX_INTERVAL_SECONDS,
    MIN_INTERVAL_SECONDS,
    PATTERN_MESSAGES,
    TRIGGER_FIELDS,
    JobCreate,
    JobFields,
    JobUpdate,
    NestedTrigger,
    PageQuery,
    PauseRequest,
    RunQuery,
    ShutdownRequest,
    UpcomingQuery,
)


def field_errors(exc: ValidationError) -> list[dict[str, str]]:
    """Turn a pydantic error into ``[{"field", "message"}]`` without echoing input.

    A value that fails every member of a union gets one entry, its messages joined.
    """
    merged: dict[str, list[str]] = {}
    for error in exc.errors(include_url=False, include_input=False):
        # pydantic adds the union member's type to the location; clients want the field.
        loc = [str(part) for part in error["loc"] if not _is_union_tag(part)]
        message = _message(error)
        merged.setdefault(".".join(loc) or "body", []).append(message)
    return [{"field": field, "message": "; ".join(messages)} for field, messages in merged.items()]


def _message(error: ErrorDetails) -> str:
    if error["type"] == "extra_forbidden":
        return "unknown field"
    if error["type"] == "string_pattern_mismatch":
        # pydantic's message quotes the regular expression; say what the form is instead.
        pattern = error.get("ctx", {}).get("pattern", "")
        return PATTERN_MESSAGES.get(pattern, "is not in the accepted form")
    return error["msg"]


_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "NestedTrigger"})


def _is_union_tag(part: str | int) -> bool:
    # Field names are identifiers; union tags are type names or like "constrained-str".
    return isinstance(part, str) and (part in _TYPE_TAGS or not part.isidentifier())


def _validate(model: type[BaseModel], data: Any) -> Any:
    if not isinstance(data, dict):
        raise InvalidJob([{"field": "body", "message": "must be a JSON object"}])
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidJob(field_errors(exc)) from None


def _trigger_spec(model: JobFields, trigger: TriggerType | NestedTrigger) -> dict[str, Any]:
    """Build the normalized trigger spec from flat fields and/or a nested trigger.

    Raises InvalidJob when a field does not apply to the trigger type, when an
    interval is not positive, or when the dates are out of order.
    """
    values: dict[str, Any] = {
        name: getattr(model, name)
        for name in ALL_TRIGGER_FIELDS
        if getattr(model, name) is not None
    }
    if isinstance(trigger, NestedTrigger):
        for name in ALL_TRIGGER_FIELDS:
            if getattr(trigger, name) is not None:
                values[name] = getattr(trigger, name)
        kind: str = trigger.type
    else:
        kind = trigger
    errors = [
        {"field": name, "message": f"does not apply to {TRIGGER_NAMES[kind]}"}
        for name in sorted(values)
        if name not in TRIGGER_FIELDS[kind]
    ]
    if errors:
        raise InvalidJob(errors)
    spec: dict[str, Any] = {"type": kind}
    if kind == "date":
        spec["run_date"] = values.get("run_date") or datetime.now(UTC).isoformat()
        spec["timezone"] = values.get("timezone")
        return spec
    if kind == "interval":
        total = sum(values.get(name, 0) * SECONDS_PER[name] for name in INTERVAL_FIELDS)
        if not MIN_INTERVAL_SECONDS <= total <= MAX_INTERVAL_SECONDS:
            raise InvalidJob(
                [
                    {
                        "field": "trigger",
                        "message": "interval must be at least 0.01 seconds and at most 100 years",
                    }
                ]
            )
        for name in INTERVAL_FIELDS:
            amount = values.get(name, 0)
            spec[name] = int(amount) if float(amount).is_integer() else amount
    else:
        for name in CRON_FIELDS:
            value = values.get(name)
            spec[name] = None if value is None else str(value)
    start, end = values.get("start_date"), values.get("end_date")
    if start and end and _as_aware(end) < _as_aware(start):
        raise InvalidJob([{"field": "end_date", "message": "must not be before start_date"}])
    spec.update(
        start_date=start, end_date=end, timezone=values.get("timezone"), jitter=values.get("jitter")
    )
    return spec


def _as_aware(value: str) -> datetime:
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.astimezone()


def _check_trigger_builds(spec: dict[str, Any]) -> None:
    """Ask the core to build the trigger, so cron fields and dates really parse, and
    refuse a cron trigger that has no fire time."""
    try:
        trigger = build_trigger(spec, UTC)
        fires = has_fire_time(trigger, datetime.now(UTC))
    except InvalidJob:
        raise
    except (ValueError, TypeError, OverflowError, LookupError):
        # APScheduler's messages quote internals; say what the client can fix.
        raise InvalidJob(
            [{"field": "trigger", "message": "the trigger fields do not form a valid schedule"}]
        ) from None
    if not fires:
        until = " before its end_date" if spec.get("end_date") else ""
        raise InvalidJob(
            [
                {
                    "field": "trigger",
                    "message": f"the cron fields match no time{until}: it has no fire time",
                }
            ]
        )


def parse_job_create(data: Any) -> dict[str, Any]:
    """Validate a create body and return the service's job spec.

    Defaults: no id (the service makes one), name = id (as Flask-APScheduler),
    no args, and the trigger ``date`` at the current time; options not given
    are left out so the service applies the configured defaults.
    """
    model: JobCreate = _validate(JobCreate, data)
    trigger = _trigger_spec(model, model.trigger)
    _check_trigger_builds(trigger)
    spec: dict[str, Any] = {
        "id": model.id,
        "func": model.func,
        "args": model.args or [],
        "kwargs": model.kwargs or {},
        "trigger": trigger,
        "name": model.name or model.id,
    }
    # Options left out take the service's defaults (ASYNCAPP_MISFIRE_GRACE_TIME ...).
    for name in (*JOB_OPTIONS, "paused"):
        if name != "name" and getattr(model, name) is not None:
            spec[name] = getattr(model, name)
    return spec


def parse_job_update(job_id: str, data: Any) -> dict[str, Any]:
    """Validate a PATCH body and return only the changes it asks for."""
    model: JobUpdate = _validate(JobUpdate, data)
    given = model.model_fields_set
    if model.id is not None and model.id != job_id:
        raise InvalidJob([{"field": "id", "message": "a job's id cannot be changed"}])
    changes: dict[str, Any] = {}
    for name in ("func", "args", "kwargs", "paused", *JOB_OPTIONS):
        if getattr(model, name) is not None:
            changes[name] = getattr(model, name)
    if "timeout" in given and model.timeout is None:
        changes["timeout"] = None  # an explicit null removes the timeout
    if model.trigger is not None:
        changes["trigger"] = _trigger_spec(model, model.trigger)
        _check_trigger_builds(changes["trigger"])
    elif given & ALL_TRIGGER_FIELDS:
        fields = sorted(given & ALL_TRIGGER_FIELDS)
        raise InvalidJob(
            [{"field": name, "message": 'needs "trigger" in the same request'} for name in fields]
        )
    return changes


def parse_run_query(args: dict[str, str]) -> RunQuery:
    """Validate run-history query parameters; raise InvalidJob on bad ones."""
    try:
        return RunQuery.model_validate(args)
    except ValidationError as exc:
        raise InvalidJob(field_errors(exc)) from None


def parse_page_query(args: dict[str, str]) -> PageQuery:
    """Validate paging query parameters; raise InvalidJob on bad ones."""
    try:
        return PageQuery.model_validate(args)
    except ValidationError as exc:
        raise InvalidJob(field_errors(exc)) from None


def parse_upcoming_query(args: dict[str, str]) -> UpcomingQuery:
    """Validate ``count`` (1-100) and ``after`` (ISO 8601 with a UTC offset; a naive time is
    rejected, not read as UTC) of the upcoming-times query; raise InvalidJob on bad ones."""
    try:
        return UpcomingQuery.model_validate(args)
    except ValidationError as exc:
        raise InvalidJob(field_errors(exc)) from None


def parse_pause(data: Any) -> str | None:
    """Return the ``note`` of a pause body."""
    note: str | None = _validate(PauseRequest, data).note
    return note


def parse_shutdown(data: Any) -> bool:
    """Return the ``wait`` flag of a shutdown body."""
    wait = _validate(ShutdownRequest, data).wait
    return wait if isinstance(wait, bool) else wait.lower() == "true"
