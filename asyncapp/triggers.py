"""Triggers as plain JSON: the form stored in the database and spoken by the API.

A *trigger spec* is a dict with ``type`` ("interval", "cron" or "date") and the
fields of that APScheduler trigger, dates as ISO 8601 strings.  This module is
the only place that turns specs into APScheduler trigger objects and back, so
what is stored, what the API accepts and what it shows cannot drift apart.
"""

from __future__ import annotations

from datetime import datetime, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger

from .constants import (
    CRON_FIELDS,
    INTERVAL_UNITS,
    SECONDS_PER,
    TRIGGER_FIELDS,
    TRIGGER_NAMES,
    TRIGGER_TYPES,
)
from .errors import InvalidJob

Spec = dict[str, Any]


def spec_from_args(trigger: str, **fields: Any) -> Spec:
    """The spec for APScheduler-style ``add_job(trigger, **trigger_args)`` arguments."""
    spec: Spec = {"type": trigger}
    for key, value in fields.items():
        spec[key] = value.isoformat() if isinstance(value, datetime) else value
    return spec


def build_trigger(spec: Spec, default_timezone: tzinfo, *, jitter: bool = True) -> BaseTrigger:
    """Build the APScheduler trigger a spec describes.

    Naive dates are read in the trigger's ``timezone`` (else ``default_timezone``).
    ``jitter=False`` leaves the spec's jitter out: the scheduler computes the
    exact times, which are the claim keys every process must agree on, and the
    executor delays the start by a random part of the jitter after the claim.

    :raises InvalidJob: with one ``trigger.<field>`` error per bad field.
    """
    kind = spec.get("type")
    if kind not in TRIGGER_TYPES:
        raise InvalidJob([_error("type", f"must be one of {', '.join(TRIGGER_TYPES)}")])
    errors: list[dict[str, str]] = []
    allowed = TRIGGER_FIELDS[kind]
    for key in spec:
        if key != "type" and key not in allowed:
            errors.append(_error(key, f"unknown field for {TRIGGER_NAMES[kind]}"))
    zone = _zone(spec.get("timezone"), default_timezone, errors)
    dates = {
        name: _date(name, spec.get(name), errors)
        for name in ("start_date", "end_date", "run_date")
        if spec.get(name) is not None
    }
    if spec.get("jitter") is not None and (not _is_number(spec["jitter"]) or spec["jitter"] < 0):
        errors.append(_error("jitter", "must be a number of seconds >= 0"))
    if errors:
        raise InvalidJob(errors)
    spread = spec.get("jitter") if jitter else None
    if kind == "interval":
        return _interval(spec, zone, dates, spread)
    if kind == "cron":
        return _cron(spec, zone, dates, spread)
    if "run_date" not in dates:
        raise InvalidJob([_error("run_date", "is required for a date trigger")])
    return DateTrigger(run_date=dates["run_date"], timezone=zone)


#: How far past a scheduled time to look for the next one (much less than any interval).
STEP = timedelta(milliseconds=1)


def fire_time_after(trigger: BaseTrigger, after: datetime | None, now: datetime) -> datetime | None:
    """The first time of ``trigger`` after ``after`` (or, if None, the first at or after ``now``).

    Every process must compute bit-identical times, because a scheduled time is
    half of the claim key.  APScheduler's interval trigger adds the interval to
    the previous time in float seconds, so a chain of additions drifts by
    microseconds from ``start + n * interval`` and two processes that started
    the chain at different times would claim different keys for the same
    time.  So the next time is always asked for "at or after" an instant, the
    form that computes ``start + n * interval`` (and cron fields) from scratch.
    """
    if isinstance(trigger, DateTrigger):
        return trigger.run_date if after is None else None
    since = now if after is None else after + STEP
    result: datetime | None = trigger.get_next_fire_time(None, since)
    return result


def canonical_time(trigger: BaseTrigger, moment: datetime) -> datetime | None:
    """The scheduled time that ``moment`` (read back from a float column) stands for."""
    if isinstance(trigger, DateTrigger):
        return trigger.run_date
    result: datetime | None = trigger.get_next_fire_time(None, moment - STEP)
    return result


def trigger_to_spec(trigger: BaseTrigger) -> Spec:
    """The full spec of a trigger (every field, for storage)."""
    if isinstance(trigger, IntervalTrigger):
        spec: Spec = {"type": "interval", **_split_interval(trigger.interval)}
        spec.update(_common(trigger))
        return spec
    if isinstance(trigger, CronTrigger):
        spec = {"type": "cron"}
        spec.update({f.name: str(f) for f in trigger.fields if not f.is_default})
        spec.update(_common(trigger))
        return spec
    if isinstance(trigger, DateTrigger):
        return {
            "type": "date",
            "run_date": trigger.run_date.isoformat(),
            "timezone": str(trigger.run_date.tzinfo),
        }
    raise TypeError(f"unsupported trigger type {type(trigger).__name__}")


def trigger_fields(trigger: BaseTrigger) -> dict[str, Any]:
    """Flask-APScheduler's flat job JSON for a trigger: ``trigger`` plus set fields."""
    return spec_fields(trigger_to_spec(trigger))


def spec_fields(spec: Spec) -> dict[str, Any]:
    """Flat job JSON fields of a trigger spec: ``trigger`` plus the fields that are set."""
    spec = dict(spec)
    fields: dict[str, Any] = {"trigger": spec.pop("type", None)}
    fields.update(
        (key, value)
        for key, value in spec.items()
        if value not in (None, 0) or key in ("start_date", "run_date", "timezone")
    )
    return fields


def _interval(spec: Spec, zone: tzinfo, dates: dict[str, datetime], jitter: Any) -> BaseTrigger:
    errors = [
        _error(unit, "must be a number >= 0")
        for unit in INTERVAL_UNITS
        if spec.get(unit) is not None and (not _is_number(spec[unit]) or spec[unit] < 0)
    ]
    if errors:
        raise InvalidJob(errors)
    units = {unit: spec.get(unit) or 0 for unit in INTERVAL_UNITS}
    if timedelta(**units) <= timedelta(0):
        raise InvalidJob([_error("seconds", "the interval must be longer than zero")])
    return IntervalTrigger(
        **units,
        start_date=dates.get("start_date"),
        end_date=dates.get("end_date"),
        timezone=zone,
        jitter=jitter,
    )


def _cron(spec: Spec, zone: tzinfo, dates: dict[str, datetime], jitter: Any) -> BaseTrigger:
    fields = {name: spec[name] for name in CRON_FIELDS if spec.get(name) is not None}
    errors = []
    for name, value in fields.items():
        if not isinstance(value, str | int) or isinstance(value, bool):
            errors.append(_error(name, "must be a cron expression string"))
            continue
        try:
            CronTrigger(**{name: value}, timezone=zone)
        except ValueError as exc:
            errors.append(_error(name, f"invalid cron expression {value!r}: {exc}"))
    if errors:
        raise InvalidJob(errors)
    try:
        return CronTrigger(
            **fields,
            start_date=dates.get("start_date"),
            end_date=dates.get("end_date"),
            timezone=zone,
            jitter=jitter,
        )
    except ValueError as exc:
        raise InvalidJob([_error("cron", str(exc))]) from None


def _common(trigger: IntervalTrigger | CronTrigger) -> Spec:
    return {
        "start_date": trigger.start_date.isoformat() if trigger.start_date else None,
        "end_date": trigger.end_date.isoformat() if trigger.end_date else None,
        "timezone": str(trigger.timezone),
        "jitter": trigger.jitter,
    }


def _split_interval(interval: timedelta) -> dict[str, float]:
    seconds = interval.total_seconds()
    parts: dict[str, float] = {}
    for unit in INTERVAL_UNITS[:-1]:
        size = SECONDS_PER[unit]
        parts[unit], seconds = divmod(seconds, size)
        parts[unit] = int(parts[unit])
    parts["seconds"] = int(seconds) if float(seconds).is_integer() else seconds
    return parts


def _zone(name: Any, default: tzinfo, errors: list[dict[str, str]]) -> tzinfo:
    if name is None:
        return default
    try:
        if not isinstance(name, str):
            raise ValueError
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        errors.append(_error("timezone", f"unknown time zone {name!r}"))
        return default


def _date(name: str, value: Any, errors: list[dict[str, str]]) -> datetime:
    if isinstance(value, datetime):
        return value
    try:
        if not isinstance(value, str):
            raise ValueError
        return datetime.fromisoformat(value)
    except ValueError:
        errors.append(_error(name, "must be an ISO 8601 date-time, e.g. 2030-01-31T12:00:00+00:00"))
        return datetime.min


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _error(field: str, message: str) -> dict[str, str]:
    return {"field": f"trigger.{field}" if field != "trigger" else field, "message": message}
