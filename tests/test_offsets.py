"""Dates with a UTC offset through the management API: every ISO 8601 offset form is
accepted for every date field, the job JSON gives back the same instant and names the
zone the trigger uses, and a job fetched with GET can be sent back as it is."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from flask import Flask

from tests.conftest import AUTH, serve

pytestmark = pytest.mark.timeout(30)

OFFSETS = ["Z", "+00:00", "-05:30", "+02:00", "+05:45"]
AT = "2028-01-07T12:00:00"


@pytest.fixture
async def client(make_app: Callable[..., Flask]) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(make_app()) as client:
        client.headers.update(AUTH)
        yield client


def instant(value: str) -> datetime:
    parsed = datetime.fromisoformat(value)
    assert parsed.tzinfo is not None, value
    return parsed


async def create(client: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
    full = {"func": "tests.jobs:record", "kwargs": {"tag": "t"}} | body
    response = await client.post("/scheduler/jobs", json=full)
    assert response.status_code == 200, response.text
    job: dict[str, Any] = response.json()
    # The answer names the zone the trigger uses (sent back below: the API accepts it).
    assert isinstance(job["timezone"], str) and job["timezone"]
    stored = (await client.get(f"/scheduler/jobs/{job['id']}")).json()
    assert stored == job
    return job


@pytest.mark.parametrize("offset", OFFSETS)
@pytest.mark.parametrize("nested", [False, True], ids=["flat", "nested"])
async def test_a_date_job_keeps_the_instant_of_its_offset_run_date(
    client: httpx.AsyncClient, offset: str, nested: bool
) -> None:
    fields = {"type": "date", "run_date": AT + offset}
    trigger: Any = fields if nested else "date"
    body = {"id": "d", "trigger": trigger} | ({} if nested else {"run_date": AT + offset})
    job = await create(client, body)
    assert job["trigger"] == "date"
    assert instant(job["run_date"]) == instant(AT + offset)
    assert instant(job["next_run_time"]) == instant(AT + offset)
    # The JSON a GET gives can be sent back (Flask-APScheduler clients do).
    sent_back = {k: v for k, v in job.items() if k in ("trigger", "run_date", "timezone")}
    again = await client.patch("/scheduler/jobs/d", json=sent_back)
    assert again.status_code == 200, again.text
    assert instant(again.json()["run_date"]) == instant(AT + offset)


@pytest.mark.parametrize("offset", OFFSETS)
async def test_a_named_zone_reads_an_offset_run_date_as_the_same_instant(
    client: httpx.AsyncClient, offset: str
) -> None:
    job = await create(
        client, {"id": "p", "trigger": "date", "run_date": AT + offset, "timezone": "Europe/Paris"}
    )
    assert job["timezone"] == "Europe/Paris"
    assert instant(job["run_date"]) == instant(AT + offset)
    assert instant(job["run_date"]).utcoffset() == ZoneInfo("Europe/Paris").utcoffset(
        instant(AT + offset)
    )


@pytest.mark.parametrize("offset", OFFSETS)
@pytest.mark.parametrize(
    "kind", [{"trigger": "interval", "minutes": 5}, {"trigger": "cron", "minute": "*/5"}]
)
async def test_start_and_end_dates_with_offsets_and_upcoming_after(
    client: httpx.AsyncClient, offset: str, kind: dict[str, Any]
) -> None:
    start, end = AT + offset, "2028-01-08T12:00:00" + offset
    job = await create(client, {"id": "r", "start_date": start, "end_date": end} | kind)
    assert instant(job["start_date"]) == instant(start)
    assert instant(job["end_date"]) == instant(end)
    assert instant(job["next_run_time"]) == instant(start)
    # ``after`` in any offset form, including a "+" a client left unescaped (read as a space).
    for after in (start, start.replace("+", " ")):
        response = await client.get("/scheduler/jobs/r/upcoming", params={"after": after})
        assert response.status_code == 200, (after, response.text)
        times = [instant(value) for value in response.json()["times"]]
        assert times[0] > instant(start) and (times[0] - instant(start)).total_seconds() == 300
