"""Request and response schemas of the management API: the one source of truth.

The same pydantic v2 models validate what the HTTP API and the CLI accept and
generate the request side of the OpenAPI document (:mod:`asyncapp.openapi`
holds the response models and builds the document), so the document cannot
drift from the validation.

Requests follow Flask-APScheduler's job JSON: a *flat* trigger form
(``{"trigger": "interval", "minutes": 10}``) and, as it also accepts, a nested
one (``{"trigger": {"type": "interval", "minutes": 10}}``).  Validation is
strict (JSON types are not coerced) and closed (unknown fields are errors), so
what the document says is exactly what the server accepts.

Promises:

- :func:`parse_job_create` / :func:`parse_job_update` return the service's
  job spec / changes dict (see ``asyncapp.service``) with a normalized trigger
  spec, or raise :class:`asyncapp.errors.InvalidJob` whose ``errors`` is a list
  of ``{"field": ..., "message": ...}``; no other exception escapes for any
  JSON value given to them.
- Messages are written here or in :mod:`asyncapp.triggers`; they may quote a
  rejected trigger value but never internal state or exception text.
"""

from __future__ import annotations

import math
import zoneinfo
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from .errors import InvalidJob
from .triggers import build_trigger

TriggerType = Literal["date", "interval", "cron"]
RunStatus = Literal["success", "error", "timeout", "missed", "interrupted", "running"]
SchedulerState = Literal["running", "paused", "stopped"]
# A cron field as APScheduler takes it: an expression ("*/5", "mon-fri") or a number.
CronValue = Annotated[str, Field(min_length=1, max_length=100)] | Annotated[int, Field(ge=0, le=9999)] | None

INTERVAL_FIELDS = ("weeks", "days", "hours", "minutes", "seconds")
CRON_FIELDS = ("year", "month", "day", "week", "day_of_week", "hour", "minute", "second")
# Which flat fields each trigger type takes (Flask-APScheduler's pop_trigger, plus jitter).
TRIGGER_FIELDS: dict[str, frozenset[str]] = {
    "date": frozenset({"run_date", "timezone"}),
    "interval": frozenset({*INTERVAL_FIELDS, "start_date", "end_date", "timezone", "jitter"}),
    "cron": frozenset({*CRON_FIELDS, "start_date", "end_date", "timezone", "jitter"}),
}
ALL_TRIGGER_FIELDS = frozenset().union(*TRIGGER_FIELDS.values())

MAX_ID_LENGTH = 191  # the jobs table's id column
MAX_JSON_DEPTH = 32
# An interval longer than this is a mistake, and bounding it keeps timedelta
# arithmetic far from OverflowError.
MAX_INTERVAL_SECONDS = 100 * 366 * 86400
_SECONDS_PER = {"weeks": 604800, "days": 86400, "hours": 3600, "minutes": 60, "seconds": 1}

JOB_ID_PATTERN = r"^[^/\x00-\x1f\x7f]+$"
FUNC_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$"


def is_safe_text(value: str) -> bool:
    """True if ``value`` can be stored in any of our databases as text.

    PostgreSQL rejects NUL, and lone surrogates cannot be encoded as UTF-8.
    """
    if "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_json_value(value: Any) -> None:
    """Raise ValueError unless ``value`` is plain JSON that we can store.

    Walks iteratively (no recursion) so a deeply nested value cannot raise
    RecursionError; rejects depth over MAX_JSON_DEPTH, non-finite floats and
    unstorable strings.
    """
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise ValueError(f"is nested deeper than {MAX_JSON_DEPTH} levels")
        if isinstance(item, str):
            if not is_safe_text(item):
                raise ValueError("contains a NUL character or an invalid surrogate")
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise ValueError("contains a number that is not finite")
        elif isinstance(item, dict):
            for key, sub in item.items():
                stack.append((key, depth))
                stack.append((sub, depth + 1))
        elif isinstance(item, list):
            stack.extend((sub, depth + 1) for sub in item)
        elif item is not None and not isinstance(item, (bool, int)):
            raise ValueError("is not JSON")


def _custom(message: str) -> PydanticCustomError:
    return PydanticCustomError("invalid", message)


class _Closed(BaseModel):
    """Base of request models: strict JSON types, unknown fields rejected."""

    model_config = ConfigDict(extra="forbid", strict=True)


class TriggerFields(_Closed):
    """The flat trigger fields of Flask-APScheduler's job JSON, plus ``jitter``."""

    run_date: str | None = Field(None, max_length=64, description="ISO 8601 date-time (date trigger)")
    start_date: str | None = Field(None, max_length=64, description="ISO 8601 date-time")
    end_date: str | None = Field(None, max_length=64, description="ISO 8601 date-time")
    timezone: str | None = Field(None, max_length=64, description="IANA time zone name, e.g. Europe/Paris")
    jitter: int | None = Field(None, ge=0, le=86400, description="Random delay added to each run, seconds")
    weeks: float | None = Field(None, ge=0, allow_inf_nan=False)
    days: float | None = Field(None, ge=0, allow_inf_nan=False)
    hours: float | None = Field(None, ge=0, allow_inf_nan=False)
    minutes: float | None = Field(None, ge=0, allow_inf_nan=False)
    seconds: float | None = Field(None, ge=0, allow_inf_nan=False)
    year: CronValue = None
    month: CronValue = None
    day: CronValue = None
    week: CronValue = None
    day_of_week: CronValue = None
    hour: CronValue = None
    minute: CronValue = None
    second: CronValue = None

    @field_validator("run_date", "start_date", "end_date")
    @classmethod
    def _iso_date(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise _custom("must be an ISO 8601 date-time, e.g. 2030-01-31T09:00:00+00:00") from None
        # Far years overflow when APScheduler shifts them across time zones.
        if not 1900 <= parsed.year <= 9000:
            raise _custom("year must be between 1900 and 9000")
        return parsed.isoformat()

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            zoneinfo.ZoneInfo(value)
        except Exception:  # ZoneInfo raises several types for odd names; all mean "unknown".
            raise _custom("is not a known IANA time zone, e.g. UTC or Europe/Paris") from None
        return value

    @field_validator(*CRON_FIELDS)
    @classmethod
    def _cron_text(cls, value: str | int | None) -> str | int | None:
        if isinstance(value, str) and not is_safe_text(value):
            raise _custom("contains a NUL character or an invalid surrogate")
        return value


class NestedTrigger(TriggerFields):
    """The nested trigger form, ``{"type": "cron", "hour": "3"}``."""

    type: TriggerType = "date"


class _JobFields(TriggerFields):
    """Fields shared by job creation and update (none is required here)."""

    name: str | None = Field(None, min_length=1, max_length=200)
    args: list[Any] | None = Field(None, max_length=100, description="Positional arguments (JSON)")
    kwargs: dict[str, Any] | None = Field(None, description="Keyword arguments (JSON)")
    misfire_grace_time: int | None = Field(
        None, ge=1, le=366 * 86400, description="Seconds a run may start late (default: settings)"
    )
    max_instances: int | None = Field(None, ge=1, le=100)
    coalesce: bool | None = Field(None, description="Run once, not once per missed time, after a delay")
    paused: bool | None = Field(None, description="Store the job without scheduling it")

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str | None) -> str | None:
        if value is not None and not is_safe_text(value):
            raise _custom("contains a NUL character or an invalid surrogate")
        return value

    @field_validator("args", "kwargs")
    @classmethod
    def _plain_json(cls, value: Any) -> Any:
        try:
            check_json_value(value)
        except ValueError as exc:
            raise _custom(str(exc)) from None
        return value


class JobCreate(_JobFields):
    """Body of ``POST /scheduler/jobs``. Omitted ``trigger`` means run once, now."""

    id: str | None = Field(
        None, min_length=1, max_length=MAX_ID_LENGTH, pattern=JOB_ID_PATTERN, description="Generated when omitted"
    )
    func: str = Field(
        max_length=256, pattern=FUNC_PATTERN, description="A registered @task function, as module:name"
    )
    trigger: TriggerType | NestedTrigger = "date"

    @field_validator("id")
    @classmethod
    def _safe_id(cls, value: str | None) -> str | None:
        if value is not None and not is_safe_text(value):
            raise _custom("contains an invalid surrogate")
        return value


class JobUpdate(_JobFields):
    """Body of ``PATCH /scheduler/jobs/{job_id}``: every field optional.

    A ``trigger`` replaces the whole trigger; trigger fields need one.  ``id``
    is accepted only when it equals the path's, so a job fetched with GET can
    be sent back.
    """

    id: str | None = Field(None, max_length=MAX_ID_LENGTH)
    func: str | None = Field(None, max_length=256, pattern=FUNC_PATTERN)
    trigger: TriggerType | NestedTrigger | None = None


class ShutdownRequest(_Closed):
    """Optional body of ``POST /scheduler/shutdown`` (Flask-APScheduler sends ``wait``)."""

    wait: bool | Literal["true", "false", "True", "False"] = True


class RunQuery(BaseModel):
    """Query string of the run-history routes (query values arrive as text)."""

    model_config = ConfigDict(extra="forbid")

    status: RunStatus | None = None
    limit: int = Field(50, ge=1, le=500)
    offset: int = Field(0, ge=0, le=10**9)


def field_errors(exc: ValidationError) -> list[dict[str, str]]:
    """Turn a pydantic error into ``[{"field", "message"}]`` without echoing input.

    A value that fails every member of a union gets one entry, its messages joined.
    """
    merged: dict[str, list[str]] = {}
    for error in exc.errors(include_url=False, include_input=False, include_context=False):
        # pydantic adds the union member's type to the location; clients want the field.
        loc = [str(part) for part in error["loc"] if not _is_union_tag(part)]
        message = "unknown field" if error["type"] == "extra_forbidden" else error["msg"]
        merged.setdefault(".".join(loc) or "body", []).append(message)
    return [{"field": field, "message": "; ".join(messages)} for field, messages in merged.items()]


_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "NestedTrigger"})


def _is_union_tag(part: str | int) -> bool:
    # Field names are identifiers; union tags are type names or like "constrained-str".
    return isinstance(part, str) and (part in _TYPE_TAGS or not part.isidentifier())


def _validate(model: type[_Closed], data: Any) -> Any:
    if not isinstance(data, dict):
        raise InvalidJob([{"field": "body", "message": "must be a JSON object"}])
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidJob(field_errors(exc)) from None


def _trigger_spec(model: _JobFields, trigger: TriggerType | NestedTrigger) -> dict[str, Any]:
    """Build the normalized trigger spec from flat fields and/or a nested trigger.

    Raises InvalidJob when a field does not apply to the trigger type, when an
    interval is not positive, or when the dates are out of order.
    """
    values: dict[str, Any] = {
        name: getattr(model, name) for name in ALL_TRIGGER_FIELDS if getattr(model, name) is not None
    }
    if isinstance(trigger, NestedTrigger):
        for name in ALL_TRIGGER_FIELDS:
            if getattr(trigger, name) is not None:
                values[name] = getattr(trigger, name)
        kind: str = trigger.type
    else:
        kind = trigger
    errors = [
        {"field": name, "message": f"does not apply to a {kind} trigger"}
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
        total = sum(values.get(name, 0) * _SECONDS_PER[name] for name in INTERVAL_FIELDS)
        if not 0 < total <= MAX_INTERVAL_SECONDS:
            raise InvalidJob(
                [{"field": "trigger", "message": "interval must be longer than 0 and at most 100 years"}]
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
    spec.update(start_date=start, end_date=end, timezone=values.get("timezone"), jitter=values.get("jitter"))
    return spec


def _as_aware(value: str) -> datetime:
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.astimezone()


def _check_trigger_builds(spec: dict[str, Any]) -> None:
    """Ask the core to build the trigger, so cron fields and dates really parse."""
    try:
        build_trigger(spec, UTC)
    except InvalidJob:
        raise
    except (ValueError, TypeError, OverflowError, LookupError):
        # APScheduler's messages quote internals; say what the client can fix.
        raise InvalidJob([{"field": "trigger", "message": "the trigger fields do not form a valid schedule"}]) from None


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
    for name in ("misfire_grace_time", "max_instances", "coalesce", "paused"):
        if getattr(model, name) is not None:
            spec[name] = getattr(model, name)
    return spec


def parse_job_update(job_id: str, data: Any) -> dict[str, Any]:
    """Validate a PATCH body and return only the changes it asks for."""
    model: JobUpdate = _validate(JobUpdate, data)
    given = model.model_fields_set
    if model.id is not None and model.id != job_id:
        raise InvalidJob([{"field": "id", "message": "a job's id cannot be changed"}])
    changes: dict[str, Any] = {}
    for name in ("func", "name", "args", "kwargs", "misfire_grace_time", "max_instances", "coalesce", "paused"):
        if getattr(model, name) is not None:
            changes[name] = getattr(model, name)
    if model.trigger is not None:
        changes["trigger"] = _trigger_spec(model, model.trigger)
        _check_trigger_builds(changes["trigger"])
    elif given & ALL_TRIGGER_FIELDS:
        fields = sorted(given & ALL_TRIGGER_FIELDS)
        raise InvalidJob([{"field": name, "message": "needs \"trigger\" in the same request"} for name in fields])
    return changes


def parse_run_query(args: dict[str, str]) -> RunQuery:
    """Validate run-history query parameters; raise InvalidJob on bad ones."""
    try:
        return RunQuery.model_validate(args)
    except ValidationError as exc:
        raise InvalidJob(field_errors(exc)) from None


def parse_shutdown(data: Any) -> bool:
    """Return the ``wait`` flag of a shutdown body (``None`` body means defaults)."""
    if data is None:
        return True
    wait = _validate(ShutdownRequest, data).wait
    return wait if isinstance(wait, bool) else wait.lower() == "true"
