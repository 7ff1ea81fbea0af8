"""Request schemas of the management API: the one source of truth.

The same pydantic v2 models validate what the HTTP API and the CLI accept
(:mod:`asyncapp.service.validation` turns them into service specs) and generate the
request side of the OpenAPI document (:mod:`asyncapp.faces.openapi` holds the
response models and builds the document), so the document cannot drift from
the validation.

Requests follow Flask-APScheduler's job JSON: a *flat* trigger form
(``{"trigger": "interval", "minutes": 10}``) and, as it also accepts, a nested
one (``{"trigger": {"type": "interval", "minutes": 10}}``).  Validation is
strict (JSON types are not coerced) and closed (unknown fields are errors), so
what the document says is exactly what the server accepts.
"""

from __future__ import annotations

import math
import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from asyncapp.constants import (
    CRON_FIELDS,
    DEFAULT_UPCOMING,
    INTERVAL_UNITS,
    MAX_ID_LENGTH,
    MAX_NOTE_LENGTH,
    MAX_UPCOMING,
    OverlapPolicy,
    RunStatus,
    TriggerType,
)
from asyncapp.constants import TRIGGER_FIELDS as _FIELDS_BY_TYPE
from asyncapp.model.triggers import parse_zone

# A cron field as APScheduler takes it: an expression ("*/5", "mon-fri") or a number.
CronValue = (
    Annotated[str, Field(min_length=1, max_length=100)]
    | Annotated[int, Field(ge=0, le=9999)]
    | None
)

INTERVAL_FIELDS = INTERVAL_UNITS
# Which flat fields each trigger type takes (Flask-APScheduler's pop_trigger, plus jitter).
TRIGGER_FIELDS: dict[str, frozenset[str]] = {
    kind: frozenset(fields) for kind, fields in _FIELDS_BY_TYPE.items()
}
ALL_TRIGGER_FIELDS = frozenset().union(*TRIGGER_FIELDS.values())

MAX_JSON_DEPTH = 32
# An interval longer than this is a mistake, and bounding it keeps timedelta
# arithmetic far from OverflowError.
MAX_INTERVAL_SECONDS = 100 * 366 * 86400
# Shorter intervals leave no room between consecutive scheduled times for the
# millisecond the scheduler looks past one time to find the next.
MIN_INTERVAL_SECONDS = 0.01

#: What a job id must not contain: the URL path separators ``/`` and ``\`` (browsers
#: read ``\`` as ``/``), C0 and C1 control characters, and invisible format
#: characters: zero-width ones, the bidirectional marks and overrides (U+200E/F,
#: U+202A-202E, U+2066-2069) and the line and paragraph separators (U+2028/9).
_NOT_IN_ID = r"/\\\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff"
#: A job id: it appears as one segment of URL paths, so it must survive every client's
#: URL handling.  Besides the characters above, an id made only of dots and
#: whitespace (".", "..", " ") is refused: "." and ".." are dot segments that
#: clients resolve away, and a blank id cannot be seen.
JOB_ID_PATTERN = rf"^[^{_NOT_IN_ID}]*[^{_NOT_IN_ID}\s.][^{_NOT_IN_ID}]*$"
_DOTTED = r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*"
FUNC_PATTERN = f"^{_DOTTED}:{_DOTTED}$"  # module:qualname
#: Text any of our databases can store (PostgreSQL refuses NUL).
NO_NUL_PATTERN = r"^[^\x00]*$"
#: What a value that does not match each pattern is told, instead of the pattern.
PATTERN_MESSAGES: dict[str, str] = {
    NO_NUL_PATTERN: "contains a NUL character",
    FUNC_PATTERN: "use module:function, e.g. myjobs:poll",
    JOB_ID_PATTERN: "must be printable text with a character other than '.' and spaces, "
    "without '/', '\\', control, zero-width or bidirectional characters",
}


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

    run_date: str | None = Field(
        None, max_length=64, description="ISO 8601 date-time (date trigger)"
    )
    start_date: str | None = Field(None, max_length=64, description="ISO 8601 date-time")
    end_date: str | None = Field(None, max_length=64, description="ISO 8601 date-time")
    timezone: str | None = Field(
        None,
        max_length=64,
        description="IANA time zone name, e.g. Europe/Paris, or a fixed offset as the job "
        "JSON shows one, e.g. UTC+02:00 (default: the offset of an offset-carrying run_date, "
        "else the scheduler's zone)",
    )
    jitter: int | None = Field(
        None, ge=0, le=86400, description="Random delay added to each run, seconds"
    )
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
            parse_zone(value)
        except ValueError:
            raise _custom(
                "is not a known IANA time zone or UTC offset, e.g. UTC, Europe/Paris, UTC+02:00"
            ) from None
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


class JobFields(TriggerFields):
    """Fields shared by job creation and update (none is required here)."""

    name: str | None = Field(None, min_length=1, max_length=200)
    args: list[Any] | None = Field(None, max_length=100, description="Positional arguments (JSON)")
    kwargs: dict[str, Any] | None = Field(None, description="Keyword arguments (JSON)")
    misfire_grace_time: int | None = Field(
        None, ge=1, le=366 * 86400, description="Seconds a run may start late (default: settings)"
    )
    max_instances: int | None = Field(
        None, ge=1, le=100, description="Runs at once, across processes (overlap 'allow' only)"
    )
    coalesce: bool | None = Field(
        None, description="Run once, not once per missed time, after a delay"
    )
    overlap: OverlapPolicy | None = Field(
        None,
        description="When a run is due while another runs: skip (record it missed), "
        "buffer_one (start it when the other ends; one waits at most), allow (run alongside, "
        "up to max_instances), cancel_other (cancel the running one, then start)",
    )
    timeout: float | None = Field(
        None,
        gt=0,
        le=7 * 86400,
        allow_inf_nan=False,
        description="Seconds a run may take; then it is cancelled and recorded as timeout "
        "(null in a PATCH removes it)",
    )
    retries: int | None = Field(
        None, ge=0, le=100, description="Further attempts after a failed or timed-out attempt"
    )
    paused: bool | None = Field(None, description="Store the job without scheduling it")
    rerun_interrupted: bool | None = Field(
        None,
        description="Run again, as a new attempt, a run whose process died while it ran",
    )

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


def _interval_needs_a_unit(schema: dict[str, Any]) -> None:
    """Say in the document what validation says: an interval trigger (flat or nested)
    needs at least one unit, given flat or inside the nested trigger."""
    interval = {
        "anyOf": [
            {"const": "interval"},
            {"type": "object", "properties": {"type": {"const": "interval"}}, "required": ["type"]},
        ]
    }
    unit_given = [
        {"required": [unit], "properties": {unit: {"type": "number"}}} for unit in INTERVAL_UNITS
    ]
    nested_unit_given = [
        {"properties": {"trigger": {"type": "object", **option}}} for option in unit_given
    ]
    schema.setdefault("allOf", []).append(
        {
            "if": {"properties": {"trigger": interval}, "required": ["trigger"]},
            "then": {"anyOf": unit_given + nested_unit_given},
        }
    )


class JobCreate(JobFields):
    """Body of ``POST /scheduler/jobs``. Omitted ``trigger`` means run once, now."""

    model_config = ConfigDict(json_schema_extra=_interval_needs_a_unit)

    id: str | None = Field(
        None,
        min_length=1,
        max_length=MAX_ID_LENGTH,
        pattern=JOB_ID_PATTERN,
        description="Generated when omitted",
    )
    func: str = Field(
        max_length=256,
        pattern=FUNC_PATTERN,
        description="A registered @task function, as module:name",
    )
    trigger: TriggerType | NestedTrigger = "date"

    @field_validator("id")
    @classmethod
    def _safe_id(cls, value: str | None) -> str | None:
        if value is not None and not is_safe_text(value):
            raise _custom("contains an invalid surrogate")
        return value


class JobUpdate(JobFields):
    """Body of ``PATCH /scheduler/jobs/{job_id}``: every field optional.

    A ``trigger`` replaces the whole trigger; trigger fields need one.  ``id``
    is accepted only when it equals the path's, so a job fetched with GET can
    be sent back.
    """

    model_config = ConfigDict(json_schema_extra=_interval_needs_a_unit)

    id: str | None = Field(None, max_length=MAX_ID_LENGTH)
    func: str | None = Field(None, max_length=256, pattern=FUNC_PATTERN)
    trigger: TriggerType | NestedTrigger | None = None


class ShutdownRequest(_Closed):
    """Optional body of ``POST /scheduler/shutdown`` (Flask-APScheduler sends ``wait``)."""

    wait: bool | Literal["true", "false", "True", "False"] = True


class PauseRequest(_Closed):
    """Optional body of ``POST /scheduler/jobs/{job_id}/pause``."""

    note: str | None = Field(
        None,
        max_length=MAX_NOTE_LENGTH,
        pattern=NO_NUL_PATTERN,
        description="Why it is paused; shown with the job",
    )

    @field_validator("note")
    @classmethod
    def _safe_note(cls, value: str | None) -> str | None:
        if value is not None and not is_safe_text(value):
            raise _custom("contains a NUL character or an invalid surrogate")
        return value


class PageQuery(BaseModel):
    """Query string of paged history routes (query values arrive as text)."""

    model_config = ConfigDict(extra="forbid")

    limit: int = Field(50, ge=1, le=500)
    offset: int = Field(0, ge=0, le=10**9)


class RunQuery(BaseModel):
    """Query string of the run-history routes (query values arrive as text)."""

    model_config = ConfigDict(extra="forbid")

    status: RunStatus | None = None
    limit: int = Field(50, ge=1, le=500)
    offset: int = Field(0, ge=0, le=10**9)


#: The form of ``after`` the document promises (also accepted: other ISO 8601 forms
#: Python reads, and a "+" that arrived as a space): an RFC 3339 date-time in the
#: years the scheduler computes in.
AFTER_PATTERN = r"^(19\d\d|[2-8]\d{3}|9000)-\d\d-\d\dT\d\d:\d\d:[0-5]\d(\.\d+)?(Z|[+-]\d\d:\d\d)$"
#: A time of day followed by a space and an offset: a "+" that a query string turned into " ".
_SPACED_OFFSET = re.compile(r"(\d\d:\d\d(?::\d\d(?:[.,]\d+)?)?) (\d\d(?::?\d\d)?)$")


class UpcomingQuery(BaseModel):
    """Query string of ``GET /scheduler/jobs/{job_id}/upcoming`` (values arrive as text).

    ``after`` must carry a UTC offset (``Z`` or ``+HH:MM``): a time without one
    is rejected rather than read as UTC, since near a daylight saving time
    change a local reading can stand for two instants, or for none.
    """

    model_config = ConfigDict(extra="forbid")

    count: int = Field(DEFAULT_UPCOMING, ge=1, le=MAX_UPCOMING, description="How many times")
    after: datetime | None = Field(
        None,
        description="ISO 8601 date-time with a UTC offset, in years 1900-9000; the times "
        "listed are strictly after it (default: now)",
        json_schema_extra={"pattern": AFTER_PATTERN},
    )

    @field_validator("after", mode="before")
    @classmethod
    def _aware_iso(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        # An unescaped "+" in a query string arrives as a space: "12:00:00 02:00".
        value = _SPACED_OFFSET.sub(r"\1+\2", value)
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise _custom(
                "must be an ISO 8601 date-time with a UTC offset, e.g. 2026-11-01T05:30:00Z "
                "(in a URL, write + as %2B)"
            ) from None
        if parsed.tzinfo is None or parsed.utcoffset() is None:
            raise _custom("must have a UTC offset (Z or +HH:MM); a local time can be ambiguous")
        if not 1900 <= parsed.year <= 9000:
            raise _custom("year must be between 1900 and 9000")
        return parsed
