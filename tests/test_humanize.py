"""Triggers, durations and times in plain words (asyncapp.faces.humanize)."""

from __future__ import annotations

from datetime import UTC
from typing import Any

import pytest

from asyncapp.faces.humanize import (
    describe_trigger,
    format_duration,
    format_utc,
    ordinal,
    run_duration,
    start_lateness,
    trigger_spec,
)
from asyncapp.model.triggers import build_trigger, trigger_to_spec


def stored(**spec: Any) -> dict[str, Any]:
    """The spec as the database keeps it (every field, as the API's writes leave it)."""
    return trigger_to_spec(build_trigger(spec, UTC))


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ({"type": "interval", "hours": 1}, "every 1 hour"),
        ({"type": "interval", "minutes": 10}, "every 10 minutes"),
        ({"type": "interval", "hours": 1, "minutes": 30}, "every 1 hour 30 minutes"),
        ({"type": "interval", "days": 1, "seconds": 1}, "every 1 day 1 second"),
        ({"type": "interval", "seconds": 0.2}, "every 0.2 seconds"),
        ({"type": "interval", "weeks": 2}, "every 2 weeks"),
        (
            {"type": "interval", "minutes": 5, "jitter": 30},
            "every 5 minutes, up to 30 s later at random",
        ),
        (
            {"type": "interval", "minutes": 5, "end_date": "2030-01-01T00:00:00+00:00"},
            "every 5 minutes, until 2030-01-01 00:00:00 UTC",
        ),
    ],
)
def test_interval_triggers(spec: dict[str, Any], words: str) -> None:
    assert describe_trigger(stored(**spec)) == words


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        (
            {"type": "cron", "minute": "0", "hour": "*/6", "timezone": "Europe/Helsinki"},
            "at minute 0 past every 6th hour, Europe/Helsinki",
        ),
        (
            {"type": "cron", "hour": 9, "minute": 30, "day_of_week": "mon-fri",
             "timezone": "Europe/Paris"},
            "at 09:30 on Monday through Friday, Europe/Paris",
        ),
        ({"type": "cron", "minute": "0"}, "at minute 0 past every hour, UTC"),
        ({"type": "cron", "minute": "*/5"}, "every 5th minute, UTC"),
        (
            {"type": "cron", "minute": "*/15", "hour": "9-17"},
            "every 15th minute past every hour from 9 through 17, UTC",
        ),
        (
            {"type": "cron", "minute": "0,30", "hour": "8-18/2"},
            "at minute 0 and 30 past every 2nd hour from 8 through 18, UTC",
        ),
        ({"type": "cron", "minute": "*", "hour": "9"}, "every minute past hour 9, UTC"),
        ({"type": "cron", "second": "*/10"}, "every 10th second, UTC"),
        ({"type": "cron", "second": "15"}, "at second 15 past every minute, UTC"),
        ({"type": "cron", "hour": "1,13"}, "at 01:00 and 13:00, UTC"),
        ({"type": "cron", "hour": 4, "minute": 5, "second": 6}, "at 04:05:06, UTC"),
        # Fields left out take APScheduler's defaults: midnight, the first day...
        ({"type": "cron", "day_of_week": "sun"}, "at 00:00 on Sunday, UTC"),
        ({"type": "cron", "day": "last"}, "at 00:00 on the last day of the month, UTC"),
        (
            {"type": "cron", "day": "1st mon", "hour": 8},
            "at 08:00 on the 1st Monday of the month, UTC",
        ),
        (
            {"type": "cron", "month": "1-3", "day": 1},
            "at 00:00 on day-of-month 1 in January through March, UTC",
        ),
        (
            {"type": "cron", "month": "*/3", "day": 15},
            "at 00:00 on day-of-month 15 in every 3rd month, UTC",
        ),
        ({"type": "cron", "year": "2030", "month": "jan"},
         "at 00:00 on day-of-month 1 in January in year 2030, UTC"),
    ],
)  # fmt: skip
def test_cron_triggers(spec: dict[str, Any], words: str) -> None:
    assert describe_trigger(stored(**spec)) == words


def test_date_triggers_say_once_and_when_in_their_zone() -> None:
    spec = {"type": "date", "run_date": "2030-01-31T12:00:00+01:00", "timezone": "Europe/Paris"}
    assert describe_trigger(spec) == "once, at 2030-01-31 12:00:00 Europe/Paris"
    # A run date given with an offset is stored with a fixed-offset zone.
    fixed = stored(type="date", run_date="2030-01-31T12:00:00+01:00")
    assert describe_trigger(fixed) == "once, at 2030-01-31 12:00:00 UTC+01:00"


def test_a_trigger_that_cannot_be_read_is_shown_as_it_is() -> None:
    assert describe_trigger({"type": "cron", "hour": "99"}) == "trigger (type=cron, hour=99)"
    assert describe_trigger({"type": "interval"}) == "trigger (type=interval)"
    assert describe_trigger({}) == "no trigger"


def test_trigger_spec_reads_the_flat_fields_of_a_job() -> None:
    job = {"id": "j", "trigger": "cron", "minute": "0", "hour": "*/6", "timezone": "UTC",
           "args": [], "jitter": None}  # fmt: skip
    assert trigger_spec(job) == {
        "type": "cron", "minute": "0", "hour": "*/6", "timezone": "UTC", "jitter": None,
    }  # fmt: skip
    assert describe_trigger(trigger_spec(job)) == "at minute 0 past every 6th hour, UTC"


@pytest.mark.parametrize(
    ("seconds", "words"),
    [
        (None, "-"),
        (0, "0 s"),
        (0.0004, "0.40 ms"),
        (0.212, "212 ms"),
        (3.4, "3.40 s"),
        (42, "42.0 s"),
        (125, "2 min 5 s"),
        (3600, "1 h"),
        (3780, "1 h 3 min"),
        (2 * 86400 + 4 * 3600, "2 d 4 h"),
        (-2, "-2.00 s"),
    ],
)
def test_format_duration(seconds: float | None, words: str) -> None:
    assert format_duration(seconds) == words


def test_ordinals() -> None:
    assert [ordinal(n) for n in (1, 2, 3, 4, 11, 12, 13, 21, 22, 111)] == [
        "1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "111th",
    ]  # fmt: skip


def test_run_times() -> None:
    run = {
        "scheduled_for": "2026-11-26T10:00:00+00:00",
        "started_at": "2026-11-26T10:00:00.250000+00:00",
        "ended_at": "2026-11-26T10:00:02.250000+00:00",
    }
    assert start_lateness(run) == 0.25 and run_duration(run) == 2.0
    assert run_duration({**run, "ended_at": None}) is None
    assert start_lateness({**run, "started_at": None}) is None
    assert format_utc("2026-11-26T12:00:00+02:00") == "2026-11-26 10:00:00 UTC"
    assert format_utc(None) == "-"
