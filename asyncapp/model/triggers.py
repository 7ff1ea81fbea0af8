"""Triggers as plain JSON: the form stored in the database and spoken by the API.

A *trigger spec* is a dict with ``type`` ("interval", "cron" or "date") and the
fields of that APScheduler trigger, dates as ISO 8601 strings.  This module is
the only place that turns specs into APScheduler trigger objects and back, so
what is stored, what the API accepts and what it shows cannot drift apart.

It is also the one place where fire times are computed (:func:`fire_time_after`),
for the scheduler, the preview of upcoming times and the first time of a new or
resumed job alike, and so where the daylight saving time policy lives.

Daylight saving time: when a zone's clock jumps, a cron time is either a
wall-clock time or a pattern over real instants, depending on its hour field.

- The hour field *names hours* unless it is ``*`` or ``*/N`` (also when it is
  left out and a finer field is given, where APScheduler makes it ``*``);
  ``0-23``, ``8-18/2`` and lists such as ``1,13`` name hours.  Then each
  matching wall-clock time fires once per local day, at the first instant the
  zone's clock shows that time or a later one: a repeated time (the clock goes
  back) fires at its first occurrence only; a skipped time (the clock jumps
  forward) fires right after the gap (a daily 02:30 in New York fires at 03:00
  EDT on 2027-03-14).  Several skipped times of one gap thus fire once, at the
  same instant.
- When the hour field is ``*`` or ``*/N``, times are real instants: every
  instant at which the clock shows a matching time fires, so a repeated
  hour's times fire in both occurrences (as far apart as the shift: an hour
  in most zones, 30 minutes on Lord Howe Island), and times in a skipped hour
  do not fire, since no instant shows them.
- Interval triggers count real time (seconds since their start) and ignore
  the clock; date triggers fire at their one instant.

Fire times are aware UTC datetimes, always real instants; the API shows them
in the trigger's zone with the offset in force at that instant.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger

from asyncapp import compat
from asyncapp.constants import (
    CRON_FIELDS,
    INTERVAL_UNITS,
    SECONDS_PER,
    TRIGGER_FIELDS,
    TRIGGER_NAMES,
    TRIGGER_TYPES,
)
from asyncapp.errors import InvalidJob

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
    A date trigger without a ``timezone`` whose ``run_date`` carries an offset
    keeps that offset as its zone (``UTC+02:00``); with one, its run date is
    that instant read in the zone.
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
    run_date = dates["run_date"]
    if spec.get("timezone") is not None and run_date.tzinfo is not None:
        run_date = run_date.astimezone(zone)
    return DateTrigger(run_date=run_date, timezone=zone)


def resolve_trigger(spec: Spec, default_timezone: tzinfo) -> tuple[BaseTrigger, Spec]:
    """Build ``spec`` once for a job: the exact trigger the scheduler computes its times
    with (no jitter: see :func:`build_trigger`), and the full spec to store (every
    field, start dates resolved now, the jitter kept).

    :raises InvalidJob: with one ``trigger.<field>`` error per bad field.
    """
    trigger = build_trigger(spec, default_timezone, jitter=False)
    full = trigger_to_spec(trigger)
    if "jitter" in full:
        full["jitter"] = spec.get("jitter")
    return trigger, full


#: How far past a scheduled time to look for the next one (much less than any interval).
STEP = timedelta(milliseconds=1)
#: The resolution of datetime: "strictly after t" is "at or after t + TICK".
TICK = timedelta(microseconds=1)


def fire_time_after(trigger: BaseTrigger, after: datetime | None, now: datetime) -> datetime | None:
    """The first time of ``trigger`` after ``after`` (or, if None, the first at or after ``now``).

    Returns an aware UTC datetime (a real instant; cron times follow the
    daylight saving time policy of the module docstring), or None when the
    trigger has no more times.

    Every process must compute bit-identical times, because a scheduled time is
    half of the claim key.  APScheduler's interval trigger adds the interval to
    the previous time in float seconds, so a chain of additions drifts by
    microseconds from ``start + n * interval`` and two processes that started
    the chain at different times would claim different keys for the same
    time.  So the next time is always asked for "at or after" an instant, the
    form that computes ``start + n * interval`` (and cron fields) from scratch.
    """
    if isinstance(trigger, DateTrigger):
        return _utc(trigger.run_date) if after is None else None
    since = now if after is None else after + STEP
    return _utc(trigger.get_next_fire_time(None, since))


def fire_times_after(trigger: BaseTrigger, after: datetime, count: int) -> list[datetime]:
    """The first ``count`` times of ``trigger`` strictly after ``after``, as the scheduler fires.

    The first is the first time at or after the next microsecond, and each
    next one is :func:`fire_time_after` the one before, as the scheduler's
    planning asks; aware UTC datetimes.
    """
    times: list[datetime] = []
    moment = fire_time_after(trigger, None, after + TICK)
    while moment is not None and len(times) < count:
        if moment > after:  # a date trigger's one time may be earlier
            times.append(moment)
        moment = fire_time_after(trigger, moment, after)
    return times


#: The Gregorian calendar repeats every 400 years (146,097 days): a cron without a year
#: field that matches no time in that span (and a day) matches none ever.
_CALENDAR_CYCLE = timedelta(days=146097 + 1)


def has_fire_time(trigger: BaseTrigger, now: datetime) -> bool:
    """False if ``trigger`` is a cron trigger whose fields match no time at or after
    ``now`` (and its ``start_date``), up to its ``end_date``: ``day=31, month=2`` never does.

    Other triggers are not judged (True).  Searching for a time that does not
    exist, APScheduler walks every year up to 9999 (a third of a second), so
    the search stops after one calendar cycle unless a year field makes the
    cycle no proof.
    """
    if not isinstance(trigger, CronTrigger):
        return True
    since = now if trigger.start_date is None else max(now, trigger.start_date)
    horizon = since + _CALENDAR_CYCLE
    end = trigger.end_date
    has_year = any(f.name == "year" and not f.is_default for f in trigger.fields)
    if end is None or end > horizon:
        end = None if has_year else horizon
    probe = CronTrigger(
        **{f.name: str(f) for f in trigger.fields if not f.is_default},
        timezone=trigger.timezone,
        start_date=since,
        end_date=end,
    )
    return probe.get_next_fire_time(None, since) is not None


def canonical_time(trigger: BaseTrigger, moment: datetime) -> datetime | None:
    """The scheduled time that ``moment`` (read back from a float column) stands for, in UTC."""
    if isinstance(trigger, DateTrigger):
        return _utc(trigger.run_date)
    return _utc(trigger.get_next_fire_time(None, moment - STEP))


def _utc(moment: datetime | None) -> datetime | None:
    # Aware datetimes sharing a tzinfo compare by wall time, ignoring fold (PEP 495),
    # so 01:30 EDT == 01:30 EST in one zone; in UTC every instant compares as itself.
    return None if moment is None else moment.astimezone(UTC)


#: An hour field that names no hour: ``*`` or ``*/N``.
_ANY_HOUR = re.compile(r"\*(/\d+)?")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SECOND = timedelta(seconds=1)


class ZonedCronTrigger(CronTrigger):
    """APScheduler's cron trigger with the daylight saving time policy of this module.

    Matching stays APScheduler's: a twin trigger with the same fields in UTC,
    where no clock jumps, finds the matching wall-clock readings exactly (its
    datetimes are local readings labelled UTC).  This class only decides which
    instants those readings stand for in ``timezone``.  APScheduler's own
    computation in a zone with daylight saving time returns a skipped time
    with the offset before the gap (02:30-05:00, not a real reading) and fires
    a repeated time twice whatever the hour field.

    It relies on these parts of APScheduler 3.11 (read from
    ``apscheduler/triggers/cron/__init__.py``; pinned by ``apscheduler>=3.11.2,<4``):
    the constructor's arguments; ``fields``, each with ``name`` and its
    expression as ``str(field)``; the ``timezone``, ``start_date``, ``end_date``
    and ``jitter`` attributes; and ``BaseTrigger._apply_jitter`` (through
    :func:`asyncapp.compat.apply_jitter`).
    """

    __slots__ = ("_twin", "wall_clock")

    def __init__(
        self,
        *,
        timezone: tzinfo,
        start_date: datetime | None = None,
        end_date: datetime | None = None,
        jitter: float | None = None,
        **fields: str | int,
    ) -> None:
        super().__init__(
            **fields, start_date=start_date, end_date=end_date, timezone=timezone, jitter=jitter
        )
        self._twin = CronTrigger(**fields, timezone=UTC)
        hour = next(field for field in self.fields if field.name == "hour")
        #: True when the hour field names hours: times are wall-clock times.
        self.wall_clock = not all(_ANY_HOUR.fullmatch(part) for part in str(hour).split(","))

    def get_next_fire_time(
        self, previous_fire_time: datetime | None, now: datetime
    ) -> datetime | None:
        """The first time at or after ``now`` (or just after ``previous_fire_time``), in UTC."""
        since = now if previous_fire_time is None else min(now, previous_fire_time + TICK)
        if self.start_date is not None:
            since = max(since, self.start_date)
        since = since.astimezone(UTC)
        found = self._by_wall_clock(since) if self.wall_clock else self._by_instant(since)
        if found is None or (self.end_date is not None and found > self.end_date):
            return None
        return compat.apply_jitter(self, found, self.jitter, now)

    def _by_wall_clock(self, since: datetime) -> datetime | None:
        """The first instant at or after ``since`` when the clock first reaches a matching time."""
        zone = self.timezone
        before = (since - TICK).astimezone(zone)
        if before.fold:
            # In the second pass of a repeated hour: its times fired in the first pass.
            before = (_change(zone, before.replace(fold=0), before) - TICK).astimezone(zone)
        wall = self._twin.get_next_fire_time(None, _wall(before, zone) + TICK)
        if wall is None:
            return None
        showing = _showing(wall, zone)
        return showing[0] if showing else _gap_end(wall, zone)

    def _by_instant(self, since: datetime) -> datetime | None:
        """The first instant at or after ``since`` at which the clock shows a matching time."""
        zone = self.timezone
        while True:
            local = since.astimezone(zone)
            wall = self._twin.get_next_fire_time(None, _wall(local, zone))
            if not local.fold and local.replace(fold=1).utcoffset() != local.utcoffset():
                # In the first pass of a repeated hour: after this pass the clock goes
                # back, and shows earlier times again before it reaches later ones.
                change = _change(zone, since, local.replace(fold=1))
                if wall is not None and wall <= _wall(change - TICK, zone):
                    found: datetime = wall.replace(tzinfo=zone).astimezone(UTC)
                    return found
                since = change
                continue
            if wall is None:
                return None
            showing = _showing(wall, zone)
            if not showing:  # skipped: look on from the end of the gap
                since = _gap_end(wall, zone)
                continue
            # Shown twice and ``since`` in the second pass: the first showing has passed.
            return showing[0] if showing[0] >= since else showing[-1]


def _wall(moment: datetime, zone: tzinfo) -> datetime:
    """The clock reading of ``zone`` at ``moment``, labelled UTC (the twin trigger's form)."""
    return moment.astimezone(zone).replace(tzinfo=UTC, fold=0)


def _showing(wall: datetime, zone: tzinfo) -> list[datetime]:
    """The instants (UTC) at which the clock of ``zone`` shows ``wall``, earliest first: one,
    none (in a gap) or two (in a repeated hour)."""
    first = wall.replace(tzinfo=zone)
    second = first.replace(fold=1)
    if first.utcoffset() == second.utcoffset():
        return [first.astimezone(UTC)]
    both = (first.astimezone(UTC), second.astimezone(UTC))
    return [moment for moment in both if _wall(moment, zone) == wall]


def _gap_end(wall: datetime, zone: tzinfo) -> datetime:
    """The first instant (UTC) after the gap that ``wall`` falls in.

    In a gap, fold=1 reads ``wall`` with the offset after the jump (an instant
    before it) and fold=0 with the offset before (an instant after it).
    """
    local = wall.replace(tzinfo=zone)
    return _change(zone, local.replace(fold=1), local)


def _change(zone: tzinfo, earlier: datetime, later: datetime) -> datetime:
    """The instant (UTC) in (``earlier``, ``later``] at which ``zone`` takes ``later``'s offset.

    The two must have different offsets, with one transition between them.  The
    tz database puts transitions on whole seconds, so bisecting whole seconds
    finds it exactly, in at most 17 steps for a shift of up to a day.
    """
    earlier, later = earlier.astimezone(UTC), later.astimezone(UTC)
    offset = later.astimezone(zone).utcoffset()
    low, high = (earlier - _EPOCH) // _SECOND, (later - _EPOCH) // _SECOND
    while high - low > 1:
        middle = (low + high) // 2
        if (_EPOCH + middle * _SECOND).astimezone(zone).utcoffset() == offset:
            high = middle
        else:
            low = middle
    return _EPOCH + high * _SECOND


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
        return ZonedCronTrigger(
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


#: A fixed offset as ``str(datetime.timezone(...))`` writes it: ``UTC+02:00``, ``UTC-05:30``.
_FIXED_OFFSET = re.compile(r"UTC([+-])([01]\d|2[0-3]):([0-5]\d)(?::([0-5]\d))?")


def parse_zone(name: str) -> tzinfo:
    """The zone ``name`` stands for: an IANA name (``Europe/Paris``, ``UTC``) or a fixed
    offset as the API shows one (``UTC+02:00``, the zone of a date given with an offset).

    :raises ValueError: for anything else.
    """
    fixed = _FIXED_OFFSET.fullmatch(name)
    if fixed:
        sign, hours, minutes, seconds = fixed.groups()
        offset = timedelta(hours=int(hours), minutes=int(minutes), seconds=int(seconds or 0))
        return UTC if not offset else timezone(-offset if sign == "-" else offset)
    try:
        return ZoneInfo(name)
    except Exception:  # ZoneInfo raises several types for odd names; all mean "unknown".
        raise ValueError(f"unknown time zone {name!r}") from None


def _zone(name: Any, default: tzinfo, errors: list[dict[str, str]]) -> tzinfo:
    if name is None:
        return default
    try:
        if not isinstance(name, str):
            raise ValueError
        return parse_zone(name)
    except ValueError:
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
