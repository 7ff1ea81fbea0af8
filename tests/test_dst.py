"""Daylight saving time: the policy of ``asyncapp.model.triggers``, seen through ``/upcoming``.

The transitions are looked up with zoneinfo, never typed in: every change of
offset in 2026-2027 of New York (one hour, at 02:00 local), Helsinki (one
hour, at 03:00/04:00 local) and Lord Howe Island (30 minutes, at 02:00 local).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, date, datetime, timedelta
from itertools import pairwise
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from click.testing import Result
from flask import Flask

from asyncapp.app import extension
from asyncapp.engine.cache import JobCache
from asyncapp.engine.scheduler import plan
from asyncapp.faces.api import OPERATIONS
from asyncapp.faces.openapi import build_document
from asyncapp.model.tasks import registry
from asyncapp.model.triggers import build_trigger, canonical_time, fire_time_after, fire_times_after
from asyncapp.model.values import from_epoch
from tests import jobs
from tests.conftest import AUTH, serve

pytestmark = pytest.mark.timeout(60)

RECORD = "tests.jobs:record"
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


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Flask:
    jobs.reset()
    return make_app()


@pytest.fixture
async def client(app: Flask) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(app) as asgi_client:
        asgi_client.headers.update(AUTH)
        yield asgi_client


async def add_cron(client: httpx.AsyncClient, job_id: str, zone: str, **fields: Any) -> None:
    """A cron job, paused: the running app must not fire it, and a preview still works."""
    body = {
        "id": job_id,
        "func": RECORD,
        "kwargs": {"tag": job_id},
        "trigger": "cron",
        "timezone": zone,
        "paused": True,
    } | fields
    response = await client.post("/scheduler/jobs", json=body)
    assert response.status_code == 200, response.text


async def upcoming(
    client: httpx.AsyncClient, job_id: str, after: datetime | None = None, count: int = 10
) -> list[str]:
    params: dict[str, Any] = {"count": count}
    if after is not None:
        params["after"] = after.isoformat()
    response = await client.get(f"/scheduler/jobs/{job_id}/upcoming", params=params)
    assert response.status_code == 200, response.text
    times: list[str] = response.json()["times"]
    return times


def instants(times: list[str]) -> list[datetime]:
    return [datetime.fromisoformat(text).astimezone(UTC) for text in times]


def local_days(times: list[str]) -> list[date]:
    return [datetime.fromisoformat(text).date() for text in times]


def offset_text(offset: timedelta) -> str:
    """``-04:00``, ``+10:30``: an offset as ISO 8601 prints it."""
    minutes = abs(offset) // MINUTE
    return f"{'-' if offset < timedelta(0) else '+'}{minutes // 60:02d}:{minutes % 60:02d}"


# -- the matrix through /upcoming ------------------------------------------------------


@pytest.mark.parametrize("case", FALL_BACK, ids=case_id)
async def test_a_repeated_wall_time_fires_once_a_day_at_its_first_occurrence(
    client: httpx.AsyncClient, case: tuple[str, datetime, timedelta, timedelta]
) -> None:
    name, change, before, after = case
    shift = before - after
    # The middle of the repeated interval: 01:30 New York, 03:30 Helsinki, 01:45 Lord Howe.
    wall = (change + before - shift / 2).replace(tzinfo=None)
    await add_cron(client, "daily", name, hour=wall.hour, minute=wall.minute)
    times = await upcoming(client, "daily", after=change - timedelta(days=3), count=7)

    days = local_days(times)
    assert days == [days[0] + timedelta(days=n) for n in range(7)]  # one a local day
    assert {text[11:19] for text in times} == {f"{wall:%H:%M}:00"}
    on_the_day = times[days.index(wall.date())]
    assert instants([on_the_day]) == [change - shift / 2]  # the first occurrence, in UTC
    assert on_the_day.endswith(offset_text(before))  # with the offset before the change


@pytest.mark.parametrize("case", SPRING_FORWARD, ids=case_id)
async def test_a_skipped_wall_time_fires_once_right_after_the_gap(
    client: httpx.AsyncClient, case: tuple[str, datetime, timedelta, timedelta]
) -> None:
    name, change, before, after = case
    shift = after - before
    # The middle of the gap: 02:30 New York, 03:30 Helsinki, 02:15 Lord Howe.
    wall = (change + before + shift / 2).replace(tzinfo=None)
    await add_cron(client, "daily", name, hour=wall.hour, minute=wall.minute)
    times = await upcoming(client, "daily", after=change - timedelta(days=3), count=7)

    days = local_days(times)
    assert days == [days[0] + timedelta(days=n) for n in range(7)]  # one a local day
    on_the_day = times[days.index(wall.date())]
    assert instants([on_the_day]) == [change]  # the first instant after the gap
    gap_end = (change + after).replace(tzinfo=None)
    assert on_the_day == f"{gap_end:%Y-%m-%dT%H:%M:%S}{offset_text(after)}"
    others = [text for text in times if text != on_the_day]
    assert {text[11:19] for text in others} == {f"{wall:%H:%M}:00"}


@pytest.mark.parametrize("case", TRANSITIONS, ids=case_id)
async def test_a_wildcard_hour_fires_at_every_instant_the_clock_shows_its_minute(
    client: httpx.AsyncClient, case: tuple[str, datetime, timedelta, timedelta]
) -> None:
    name, change, before, after = case
    zone = ZoneInfo(name)
    wall = (change + min(before, after) + abs(after - before) / 2).replace(tzinfo=None)
    await add_cron(client, "hourly", name, minute=wall.minute)
    start = change - timedelta(hours=3)
    times = await upcoming(client, "hourly", after=start, count=8)

    # Every instant, minute by minute, whose local reading has that minute.
    expected = []
    moment = start + MINUTE
    while len(expected) < 8:
        if moment.astimezone(zone).minute == wall.minute:
            expected.append(moment)
        moment += MINUTE
    assert instants(times) == expected
    shown = [datetime.fromisoformat(text).replace(tzinfo=None) for text in times]
    if after < before:  # the repeated reading fires in both occurrences, the shift apart
        assert shown.count(wall) == 2
        first, second = (t for t, s in zip(instants(times), shown, strict=True) if s == wall)
        assert second - first == before - after
    else:  # the skipped reading never fires: no instant shows it
        assert wall not in shown
        assert wall - timedelta(hours=1) in shown and wall + timedelta(hours=1) in shown


async def test_the_new_york_cases_of_the_issue(client: httpx.AsyncClient) -> None:
    await add_cron(client, "fall", "America/New_York", hour=1, minute=30)
    await add_cron(client, "spring", "America/New_York", hour=2, minute=30)
    fall = await upcoming(client, "fall", after=datetime(2026, 10, 31, 12, tzinfo=UTC), count=3)
    assert fall == [
        "2026-11-01T01:30:00-04:00",  # 05:30Z; 06:30Z (01:30 EST) does not fire
        "2026-11-02T01:30:00-05:00",
        "2026-11-03T01:30:00-05:00",
    ]
    spring = await upcoming(client, "spring", after=datetime(2027, 3, 13, 12, tzinfo=UTC), count=3)
    assert spring == [
        "2027-03-14T03:00:00-04:00",  # not 02:30-05:00, which no clock showed
        "2027-03-15T02:30:00-04:00",
        "2027-03-16T02:30:00-04:00",
    ]


async def test_an_interval_job_counts_real_time_across_a_transition(
    client: httpx.AsyncClient,
) -> None:
    change, before, after = next(c[1:] for c in FALL_BACK if c[0] == "America/New_York")
    start = change - timedelta(hours=3)
    body = {
        "id": "every90",
        "func": RECORD,
        "kwargs": {"tag": "every90"},
        "trigger": "interval",
        "minutes": 90,
        "start_date": start.isoformat(),
        "timezone": "America/New_York",
        "paused": True,
    }
    assert (await client.post("/scheduler/jobs", json=body)).status_code == 200
    times = await upcoming(client, "every90", after=start - MINUTE, count=5)
    moments = instants(times)
    assert moments == [start + n * timedelta(minutes=90) for n in range(5)]
    assert {text[-6:] for text in times} == {offset_text(before), offset_text(after)}


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


# -- the preview and the firing path share one computation -----------------------------


@pytest.mark.parametrize("case", [*FALL_BACK[:2], *SPRING_FORWARD[:2]], ids=case_id)
async def test_planning_fires_the_times_the_preview_shows_across_a_transition(
    app: Flask, client: httpx.AsyncClient, case: tuple[str, datetime, timedelta, timedelta]
) -> None:
    name, change, _, _ = case
    await add_cron(client, "named", name, hour="0-4", minute="*/20")
    await add_cron(client, "any", name, minute="*/20")
    service = extension(app).service()
    start = change - timedelta(hours=3) + timedelta(seconds=7)  # a time neither fires at
    for job_id in ("named", "any"):
        preview = instants(await upcoming(client, job_id, after=start, count=30))
        assert preview[0] < change < preview[-1]

        # The scheduler's side: the row as the database holds it, in a JobCache
        # (which reads next_run_time back from a float), planned at chosen
        # instants instead of waiting for them.
        job = await service.store.db.read(
            lambda conn, job_id=job_id: service.store.rows.get(conn, job_id)
        )
        assert job is not None
        cache = JobCache(registry, UTC)
        cache.put(job.changed(next_run_time=from_epoch(start.timestamp())))
        entry = cache.entry(job_id)
        assert entry is not None
        planned: list[datetime] = []
        now = start
        while len(planned) < len(preview):
            now += timedelta(minutes=7)
            times, folded, next_time = plan(entry, now)
            assert folded is None
            planned += times
            cache.advance(entry, next_time)
        assert planned[: len(preview)] == preview


async def test_real_fires_happen_at_times_the_preview_listed(
    client: httpx.AsyncClient,
) -> None:
    # Lord Howe: an offset of +10:30 or +11:00, so a time kept as a local reading
    # instead of an instant would show.
    await add_cron(client, "tick", "Australia/Lord_Howe", second="*/1")
    preview = await upcoming(client, "tick", count=100)
    assert (await client.post("/scheduler/jobs/tick/resume")).status_code == 200
    await jobs.wait_fired("tick", 3)
    assert (await client.post("/scheduler/jobs/tick/pause")).status_code == 200

    response = await client.get("/scheduler/jobs/tick/runs", params={"limit": 500})
    recorded = [run["scheduled_for"] for run in response.json()["runs"]]
    assert len(recorded) >= 3
    assert set(instants(recorded)) <= set(instants(preview))


# -- validation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"count": 0}, "count"),
        ({"count": 101}, "count"),
        ({"count": "many"}, "count"),
        ({"after": "next tuesday"}, "after"),
        ({"after": "2027-03-28T03:30:00"}, "after"),  # naive: rejected, not read as UTC
        ({"after": "2027-03-28"}, "after"),
        ({"after": "0001-01-01T00:00:00+05:00"}, "after"),
        ({"colour": "red"}, "colour"),
    ],
)
async def test_upcoming_rejects_a_bad_query_with_422(
    client: httpx.AsyncClient, params: dict[str, Any], field: str
) -> None:
    await add_cron(client, "daily", "Europe/Helsinki", hour=3, minute=30)
    response = await client.get("/scheduler/jobs/daily/upcoming", params=params)
    assert response.status_code == 422, response.text
    assert [error["field"] for error in response.json()["errors"]] == [field]


async def test_upcoming_count_bounds_and_default(client: httpx.AsyncClient) -> None:
    await add_cron(client, "daily", "Europe/Helsinki", hour=3, minute=30)
    after = datetime(2027, 1, 1, tzinfo=UTC)
    assert len(await upcoming(client, "daily", after=after, count=1)) == 1
    assert len(await upcoming(client, "daily", after=after, count=100)) == 100
    response = await client.get("/scheduler/jobs/daily/upcoming")
    assert len(response.json()["times"]) == 10


async def test_upcoming_of_an_unknown_job_is_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/scheduler/jobs/nope/upcoming")
    assert response.status_code == 404, response.text
    assert response.json()["error_message"]


async def test_upcoming_previews_a_paused_job_from_now_without_resuming_it(
    client: httpx.AsyncClient,
) -> None:
    await add_cron(client, "weekly", "Europe/Helsinki", day_of_week="mon", hour=9)
    before = datetime.now(UTC)
    times = await upcoming(client, "weekly", count=3)
    moments = instants(times)
    assert len(moments) == 3 and before < moments[0]
    assert all(timedelta(days=6) < b - a < timedelta(days=8) for a, b in pairwise(moments))
    assert all(datetime.fromisoformat(t).strftime("%a %H:%M") == "Mon 09:00" for t in times)
    job = (await client.get("/scheduler/jobs/weekly")).json()
    assert job["paused"] is True and job["next_run_time"] is None


def test_openapi_documents_upcoming() -> None:
    doc = build_document(OPERATIONS, prefix="/scheduler", version="1", functions=[])
    operation = doc["paths"]["/scheduler/jobs/{job_id}/upcoming"]["get"]
    params = {param["name"]: param for param in operation["parameters"]}
    assert params["count"]["schema"]["maximum"] == 100
    assert params["count"]["schema"]["minimum"] == 1
    ref = operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    assert doc["components"]["schemas"][ref.rsplit("/", 1)[1]]["required"] == ["times"]
    assert {"404", "422"} <= set(operation["responses"])


# -- the CLI ---------------------------------------------------------------------------


def test_cli_upcoming(make_app: Callable[..., Flask]) -> None:
    runner = make_app().test_cli_runner()

    def cli(*args: str) -> Result:
        return runner.invoke(args=["jobs", *args])

    added = cli(
        "add", RECORD, "--id", "nightly", "--trigger", "cron", "--set", "hour=2",
        "--set", "minute=30", "--set", "timezone=America/New_York", "--kwarg", 'tag="n"',
        "--paused",
    )  # fmt: skip
    assert added.exit_code == 0, added.output
    shown = cli("upcoming", "nightly", "--count", "2", "--after", "2027-03-13T12:00:00Z")
    assert shown.exit_code == 0, shown.output
    assert shown.output.splitlines() == ["2027-03-14T03:00:00-04:00", "2027-03-15T02:30:00-04:00"]
    as_json = cli(
        "upcoming", "nightly", "--count", "1", "--after", "2027-03-13T12:00:00Z", "--json"
    )
    assert json.loads(as_json.output) == {"times": ["2027-03-14T03:00:00-04:00"]}
    for args, text in [
        (("--count", "0"), "count"),
        (("--after", "2027-03-14T02:30:00"), "after"),
    ]:
        refused = cli("upcoming", "nightly", *args)
        assert refused.exit_code == 1 and text in refused.output, refused.output
    missing = cli("upcoming", "nope")
    assert missing.exit_code == 1 and "nope" in missing.output
