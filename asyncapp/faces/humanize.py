"""Jobs in plain words: triggers, durations and ages as people read them.

:func:`describe_trigger` turns a trigger spec (the JSON form stored in the
database, see :mod:`asyncapp.model.triggers`) into a phrase such as "every 1 hour"
or "at minute 0 past every 6th hour, Europe/Helsinki".  Cron fields that are
left out are filled in the way APScheduler fills them (by building its
trigger), so the words describe what fires, not what was typed.  An
expression the phrases do not cover is quoted as it is rather than guessed.

Everything here is pure: no I/O, no Flask; the dashboard and its tests call it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.triggers.cron import CronTrigger

from asyncapp.constants import CRON_FIELDS, INTERVAL_UNITS, TRIGGER_FIELDS

DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
DAY_NAMES = {name[:3].lower(): name for name in DAYS}
MONTHS = (
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
)  # fmt: skip
MONTH_NAMES = {name[:3].lower(): name for name in MONTHS}

_NUMBER = re.compile(r"\d+")
_STEP = re.compile(r"\*/(\d+)")
_RANGE = re.compile(r"(\w+)-(\w+)(?:/(\d+))?")
_NTH_DAY = re.compile(r"(1st|2nd|3rd|4th|5th|last) (mon|tue|wed|thu|fri|sat|sun)")


def describe_trigger(spec: Mapping[str, Any]) -> str:
    """A trigger spec (``{"type": "interval", "hours": 1, ...}``) in plain English.

    Interval: "every 1 hour", "every 1 day 12 hours", "every 0.5 seconds", with
    ", until <end>" and ", up to N s later at random" (jitter) when set.  Cron:
    "at 09:30 on Monday through Friday, Europe/Paris", "at minute 0 past every
    6th hour, Europe/Helsinki".  Date: "once, at 2030-01-31 12:00:00 UTC".
    Never raises: a spec it cannot read is shown as its raw fields.
    """
    kind = spec.get("type")
    try:
        if kind == "interval":
            text = _interval(spec)
        elif kind == "cron":
            text = _cron(spec)
        elif kind == "date":
            return f"once, at {format_moment(spec.get('run_date'), spec.get('timezone'))}"
        else:
            return _raw(spec)
    except (ValueError, TypeError, KeyError):
        return _raw(spec)
    if spec.get("end_date"):
        text += f", until {format_moment(spec['end_date'], spec.get('timezone'))}"
    if spec.get("jitter"):
        text += f", up to {format_number(spec['jitter'])} s later at random"
    return text


def format_duration(seconds: float | None) -> str:
    """``0.40 ms``, ``212 ms``, ``3.40 s``, ``42.0 s``, ``2 min 5 s``, ``1 h 3 min``, ``2 d 4 h``;
    ``-`` for None."""
    if seconds is None:
        return "-"
    if seconds < 0:
        return "-" + format_duration(-seconds)
    if seconds == 0:
        return "0 s"
    if seconds < 0.001:
        return f"{seconds * 1000:.2f} ms"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 10:
        return f"{seconds:.2f} s"
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    for size, unit, smaller, small_unit in (
        (86400, "d", 3600, "h"),
        (3600, "h", 60, "min"),
        (60, "min", 1, "s"),
    ):
        if whole >= size:
            big, rest = divmod(whole, size)
            part = rest // smaller
            return f"{big} {unit} {part} {small_unit}" if part else f"{big} {unit}"
    return f"{whole} s"  # 59.5 s and up round to 60 s, so never reached


def format_number(value: float) -> str:
    """``5`` for 5.0, ``0.25`` for 0.25: no trailing zeros."""
    return f"{value:g}"


def format_moment(value: Any, zone_name: str | None = None) -> str:
    """An ISO 8601 date-time as ``2030-01-31 12:00:00 Europe/Paris``, read in ``zone_name``.

    A zone that is not an IANA name (a fixed offset such as ``UTC+01:00``) keeps
    the date-time's own offset.
    """
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    zone = _zone(zone_name)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=zone or UTC)
    if zone is not None:
        moment, label = moment.astimezone(zone), zone_name or "UTC"
    else:
        label = zone_name or str(moment.tzinfo)
    return f"{moment.strftime('%Y-%m-%d %H:%M:%S')} {label}"


def format_utc(value: str | None) -> str:
    """An ISO 8601 date-time with an offset as ``2030-01-31 11:00:00 UTC``; ``-`` for None."""
    if not value:
        return "-"
    return datetime.fromisoformat(value).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def one_line(text: str | None, limit: int = 120) -> str:
    """The first line of ``text``, cut to ``limit`` characters with an ellipsis; ``""`` for None."""
    if not text:
        return ""
    lines = text.strip().splitlines()
    first = lines[0] if lines else ""
    if len(first) > limit:
        return first[: limit - 1].rstrip() + "…"
    return first + (" …" if len(lines) > 1 else "")


def run_duration(run: Mapping[str, Any]) -> float | None:
    """Seconds a run (a run history entry) took; None if it did not start or has not ended."""
    return _seconds_between(run.get("started_at"), run.get("ended_at"))


def start_lateness(run: Mapping[str, Any]) -> float | None:
    """Seconds a run started after its scheduled time; None if it never started."""
    return _seconds_between(run.get("scheduled_for"), run.get("started_at"))


def trigger_spec(job: Mapping[str, Any]) -> dict[str, Any]:
    """The trigger spec inside a job's API JSON (where its fields are flat)."""
    kind = job.get("trigger")
    fields = TRIGGER_FIELDS.get(kind, ()) if isinstance(kind, str) else ()
    return {"type": kind, **{name: job[name] for name in fields if name in job}}


def ordinal(number: int) -> str:
    """1st, 2nd, 3rd, 4th, 11th, 12th, 13th, 21st..."""
    if 10 <= number % 100 <= 20:
        suffix = "th"
    else:
        suffix = {1: "st", 2: "nd", 3: "rd"}.get(number % 10, "th")
    return f"{number}{suffix}"


# -- interval ----------------------------------------------------------------------


def _interval(spec: Mapping[str, Any]) -> str:
    parts = []
    for unit in INTERVAL_UNITS:
        amount = spec.get(unit) or 0
        if amount:
            name = unit if amount != 1 else unit[:-1]
            parts.append(f"{format_number(amount)} {name}")
    if not parts:
        raise ValueError("an interval of zero")
    return "every " + " ".join(parts)


# -- cron --------------------------------------------------------------------------


def _cron(spec: Mapping[str, Any]) -> str:
    given = {name: spec[name] for name in CRON_FIELDS if spec.get(name) is not None}
    # APScheduler fills the fields left out ("*" above the given ones, their
    # minimum below): build its trigger and read them back.
    trigger = CronTrigger(**given, timezone=UTC)
    fields = {field.name: str(field) for field in trigger.fields}
    when = _time_of_day(fields["hour"], fields["minute"], fields["second"])
    days = [
        phrase
        for phrase in (
            _day_of_month(fields["day"]),
            _day_of_week(fields["day_of_week"]),
            _field(fields["week"], "week", "in"),
            _month(fields["month"]),
            _field(fields["year"], "year", "in"),
        )
        if phrase
    ]
    text = " ".join([when, *days])
    return f"{text}, {spec.get('timezone') or 'UTC'}"


def _time_of_day(hour: str, minute: str, second: str) -> str:
    """ "at 09:30", "at minute 0 past every 6th hour", "every 5th minute", "every second"."""
    hours, minutes, seconds = _numbers(hour), _numbers(minute), _numbers(second)
    if hours and len(hours) <= 4 and minutes and seconds and len(minutes) == len(seconds) == 1:
        return "at " + _join([_clock(h, minutes[0], seconds[0]) for h in hours])
    phrases: list[str] = []
    pinned = False  # the last phrase names values ("at minute 0"): a "*" above it is said
    for unit, expr in (("second", second), ("minute", minute), ("hour", hour)):
        if unit == "second" and expr == "0":
            continue  # what APScheduler fills in below a given minute
        if expr == "*" and phrases and not pinned:
            continue  # "every 5th minute" already says every hour
        phrase, pinned = _unit_phrase(expr, unit, past=bool(phrases))
        phrases.append(phrase)
    return " ".join(phrases)


def _clock(hour: int, minute: int, second: int) -> str:
    return f"{hour:02d}:{minute:02d}" + (f":{second:02d}" if second else "")


def _unit_phrase(expr: str, unit: str, *, past: bool) -> tuple[str, bool]:
    """The phrase of one field, and whether it names values rather than a repetition.

    ``past`` phrases qualify the smaller unit before them ("past every 6th hour").
    """
    lead = "past " if past else ""
    if expr == "*":
        return f"{lead}every {unit}", False
    step = _STEP.fullmatch(expr)
    if step:
        return f"{lead}every {_nth(int(step.group(1)))}{unit}", False
    numbers = _numbers(expr)
    if numbers is not None:
        return f"{'past' if past else 'at'} {unit} {_join([str(n) for n in numbers])}", True
    span = _RANGE.fullmatch(expr)
    if span:
        low, high, every = span.groups()
        return f"{lead}every {_nth(int(every or 1))}{unit} from {low} through {high}", False
    return f"{'past' if past else 'at'} {unit} {expr!r}", True


def _day_of_month(expr: str) -> str:
    if expr == "*":
        return ""
    if expr == "last":
        return "on the last day of the month"
    nth = _NTH_DAY.fullmatch(expr)
    if nth:
        return f"on the {nth.group(1)} {DAY_NAMES[nth.group(2)]} of the month"
    return _field(expr, "day-of-month", "on")


def _day_of_week(expr: str) -> str:
    if expr == "*":
        return ""
    names = [_named(part, DAY_NAMES, DAYS) for part in expr.split(",")]
    if all(names):
        return "on " + _join(names)
    return _field(expr, "day-of-week", "on")


def _month(expr: str) -> str:
    if expr == "*":
        return ""
    names = [_named(part, MONTH_NAMES, MONTHS, first=1) for part in expr.split(",")]
    if all(names):
        return "in " + _join(names)
    return _field(expr, "month", "in")


def _named(part: str, names: dict[str, str], ordered: tuple[str, ...], first: int = 0) -> str:
    """A day or month (name or number) or a range of them, spelled out; "" if unreadable."""

    def one(token: str) -> str:
        if token.lower() in names:
            return names[token.lower()]
        if token.isdigit() and 0 <= int(token) - first < len(ordered):
            return ordered[int(token) - first]
        return ""

    span = _RANGE.fullmatch(part)
    if span and not span.group(3):
        low, high = one(span.group(1)), one(span.group(2))
        return f"{low} through {high}" if low and high else ""
    return one(part)


def _field(expr: str, unit: str, lead: str) -> str:
    if expr == "*":
        return ""
    step = _STEP.fullmatch(expr)
    if step:
        return f"{lead} every {_nth(int(step.group(1)))}{unit}"
    numbers = _numbers(expr)
    if numbers is not None:
        return f"{lead} {unit} {_join([str(n) for n in numbers])}"
    span = _RANGE.fullmatch(expr)
    if span and not span.group(3):
        return f"{lead} every {unit} from {span.group(1)} through {span.group(2)}"
    return f"{lead} {unit} {expr!r}"


def _numbers(expr: str) -> list[int] | None:
    """The numbers of a plain list such as ``1,13`` (or one number); None otherwise."""
    parts = expr.split(",")
    if all(_NUMBER.fullmatch(part) for part in parts):
        return [int(part) for part in parts]
    return None


def _nth(step: int) -> str:
    return "" if step == 1 else f"{ordinal(step)} "


def _join(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _seconds_between(start: Any, end: Any) -> float | None:
    if not start or not end:
        return None
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def _zone(name: str | None) -> tzinfo | None:
    try:
        return ZoneInfo(name) if name else UTC
    except (ZoneInfoNotFoundError, ValueError):
        return None


def _raw(spec: Mapping[str, Any]) -> str:
    fields = ", ".join(f"{key}={value}" for key, value in spec.items() if value is not None)
    return f"trigger ({fields})" if fields else "no trigger"
