"""Daylight saving time: the policy of ``asyncapp.triggers``.

The transitions are looked up with zoneinfo, never typed in: every change of
offset in 2026-2027 of New York (one hour, at 02:00 local), Helsinki (one
hour, at 03:00/04:00 local) and Lord Howe Island (30 minutes, at 02:00 local).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from asyncapp.db import from_epoch
from asyncapp.triggers import build_trigger, canonical_time, fire_time_after, fire_times_after

pytestmark = pytest.mark.timeout(60)

ZONES = ("America/New_York", "Europe/Helsinki", "Australia/Lord_Howe")
MINUTE = timedelta(minutes=1)


def transitions(name: str) -> list[tuple[datetime, timedelta, timedelta]]:
    """Every change of ``name``'s UTC offset in 2026-2027: (instant, offset before, after)."""
    zone = ZoneInfo(name)

    def offset(second: int) -> timedelta:
        return datetime.fromtimestamp(second, zone).utcoffset()  # type: ignore[return-value]

    start = int(datetime(2026, 1, 1, tzinfo=UTC).timestamp())
    end = int(datetime(2028, 1, 1, tzinfo=UTC).timestamp())
    found = []
    step = 6 * 3600
    for low in range(start, end, step):
        high = low + step
        before, after = offset(low), offset(high)
        if before == after:
            continue
        while high - low > 1:
            middle = (low + high) // 2
            if offset(middle) == before:
                low = middle
            else:
                high = middle
        found.append((datetime.fromtimestamp(high, UTC), before, after))
    return found


TRANSITIONS = [(name, *change) for name in ZONES for change in transitions(name)]
FALL_BACK = [case for case in TRANSITIONS if case[3] < case[2]]
SPRING_FORWARD = [case for case in TRANSITIONS if case[3] > case[2]]


def case_id(case: tuple[str, datetime, timedelta, timedelta]) -> str:
    return f"{case[0]}-{case[1]:%Y-%m-%d}"


def test_the_matrix_has_both_transitions_of_each_zone_each_year() -> None:
    for name in ZONES:
        assert len([c for c in FALL_BACK if c[0] == name]) == 2, name
        assert len([c for c in SPRING_FORWARD if c[0] == name]) == 2, name
    shifts = {abs(after - before) for _, _, before, after in TRANSITIONS}
    assert shifts == {timedelta(hours=1), timedelta(minutes=30)}


# -- the policy against its definition, at the trigger ---------------------------------

WALL_CLOCK_SPECS = [
    {"hour": "1", "minute": "30"},
    {"hour": "2", "minute": "15"},
    {"hour": "3", "minute": "30"},
    {"hour": "1-3", "minute": "*/20"},
    {"hour": "2,3", "minute": "0"},
    {"hour": "0-23", "minute": "45"},
]
INSTANT_SPECS = [{"minute": "30"}, {"minute": "*/20"}, {"hour": "*/2", "minute": "15"}]


def policy_times(
    spec: dict[str, str], zone: ZoneInfo, start: datetime, end: datetime
) -> list[datetime]:
    """The policy, by brute force over every minute from ``start`` to ``end``.

    Wall-clock (hours named): a matching reading fires at the first instant the
    clock shows it or a later reading.  Real instants (``*``, ``*/N``): every
    instant whose reading matches.
    """
    matcher = build_trigger({"type": "cron", **spec, "timezone": "UTC"}, UTC, jitter=False)

    def matches(reading: datetime) -> bool:
        return fire_time_after(matcher, None, reading) == reading

    def reading(moment: datetime) -> datetime:
        return moment.astimezone(zone).replace(tzinfo=UTC, fold=0)

    named = "hour" in spec and not spec["hour"].startswith("*")
    found = []
    highest = reading(start - MINUTE)  # the latest reading the clock has shown
    moment = start
    while moment <= end:
        now_showing = reading(moment)
        if named:
            unseen = highest + MINUTE
            while unseen <= now_showing and not matches(unseen):
                unseen += MINUTE
            if unseen <= now_showing:
                found.append(moment)
            highest = max(highest, now_showing)
        elif matches(now_showing):
            found.append(moment)
        moment += MINUTE
    return found


@pytest.mark.parametrize("name", ZONES)
def test_fire_times_follow_the_policy_and_survive_a_float_column(name: str) -> None:
    zone = ZoneInfo(name)
    for change, _, _ in transitions(name):
        start, end = change - timedelta(hours=5), change + timedelta(hours=5)
        for spec in WALL_CLOCK_SPECS + INSTANT_SPECS:
            trigger = build_trigger({"type": "cron", **spec, "timezone": name}, UTC, jitter=False)
            expected = policy_times(spec, zone, start, end)
            got = [t for t in fire_times_after(trigger, start - MINUTE, 40) if t <= end]
            assert got == expected, (name, change, spec)
            for moment in got:
                assert moment.tzinfo is UTC
                # What the scheduler reads back from the next_run_time column.
                assert canonical_time(trigger, from_epoch(moment.timestamp())) == moment
