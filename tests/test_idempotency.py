"""Retried requests with an ``Idempotency-Key`` get their first answer and change nothing more.

The lost answer is the fault that makes clients retry: a commit that succeeded
but whose acknowledgement never reached the caller.  It cannot be caused for
real between this process and its own database thread, so one test makes the
claim transaction's answer fail after it committed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from asyncapp.errors import DatabaseUnavailable
from asyncapp.runtime import Runtime
from tests.conftest import settled
from tests.test_api import assert_error

pytestmark = pytest.mark.timeout(30)

JOB = {"func": "tests.jobs:record", "kwargs": {"tag": "k"}, "trigger": "interval", "minutes": 10}


async def test_a_retried_add_without_id_creates_one_job(
    served: tuple[httpx.AsyncClient, Runtime],
) -> None:
    client, _ = served
    key = {"Idempotency-Key": "add-once-1"}
    first = await client.post("/scheduler/jobs", json=JOB, headers=key)
    again = await client.post("/scheduler/jobs", json=dict(reversed(JOB.items())), headers=key)
    assert first.status_code == again.status_code == 200, (first.text, again.text)
    assert again.json() == first.json()
    listed = (await client.get("/scheduler/jobs")).json()
    assert [job["id"] for job in listed] == [first.json()["id"]]
    changes = (await client.get(f"/scheduler/jobs/{first.json()['id']}/changes")).json()
    assert [change["action"] for change in changes["changes"]] == ["add"]


async def test_without_a_key_a_retried_add_creates_a_second_job(
    served: tuple[httpx.AsyncClient, Runtime],
) -> None:
    client, _ = served
    for _ in range(2):
        assert (await client.post("/scheduler/jobs", json=JOB)).status_code == 200
    assert len((await client.get("/scheduler/jobs")).json()) == 2


async def test_a_key_sent_with_another_request_is_refused(
    served: tuple[httpx.AsyncClient, Runtime],
) -> None:
    client, _ = served
    key = {"Idempotency-Key": "reused"}
    assert (await client.post("/scheduler/jobs", json=JOB, headers=key)).status_code == 200
    other = await client.post("/scheduler/jobs", json={**JOB, "minutes": 5}, headers=key)
    body = assert_error(other, 422)
    assert "Idempotency-Key" in body["error_message"]
    assert len((await client.get("/scheduler/jobs")).json()) == 1


@pytest.mark.parametrize("key", ["", "x" * 256, "caf\u00e9", "tab\there"])
async def test_a_malformed_key_is_refused(
    served: tuple[httpx.AsyncClient, Runtime], key: str
) -> None:
    client, _ = served
    response = await client.post(
        "/scheduler/jobs", json=JOB, headers={"Idempotency-Key": key.encode("utf-8")}
    )
    body = assert_error(response, 422)
    assert body["errors"][0]["field"] == "Idempotency-Key"
    assert (await client.get("/scheduler/jobs")).json() == []


async def test_a_retried_run_now_runs_the_job_once(
    served: tuple[httpx.AsyncClient, Runtime], tmp_path: Path
) -> None:
    client, runtime = served
    marks = tmp_path / "marks"
    job = {"id": "m", "func": "tests.jobs:mark", "args": [str(marks)], "trigger": "interval",
           "hours": 1}  # fmt: skip
    assert (await client.post("/scheduler/jobs", json=job)).status_code == 200
    key = {"Idempotency-Key": "run-once-1"}
    first = await client.post("/scheduler/jobs/m/run", headers=key)
    again = await client.post("/scheduler/jobs/m/run", headers=key)
    assert first.status_code == again.status_code == 200, (first.text, again.text)
    assert again.json()["run"]["id"] == first.json()["run"]["id"]
    await settled(runtime)
    assert len(marks.read_text().splitlines()) == 1  # the job's own record of its runs
    other = await client.post("/scheduler/jobs/m/run", headers={"Idempotency-Key": "run-once-2"})
    assert other.json()["run"]["id"] != first.json()["run"]["id"]
    await settled(runtime)
    assert len(marks.read_text().splitlines()) == 2


async def test_a_run_now_whose_answer_was_lost_runs_once_when_retried(
    served: tuple[httpx.AsyncClient, Runtime], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, runtime = served
    marks = tmp_path / "marks"
    job = {"id": "m", "func": "tests.jobs:mark", "args": [str(marks)], "trigger": "interval",
           "hours": 1}  # fmt: skip
    assert (await client.post("/scheduler/jobs", json=job)).status_code == 200
    store = runtime.store
    claim = store.claim
    lost: list[str] = []

    async def answer_lost_after_commit(*args: Any, **kwargs: Any) -> Any:
        result = await claim(*args, **kwargs)
        if not lost:
            lost.append("claim")
            raise DatabaseUnavailable("the connection broke before the commit was acknowledged")
        return result

    monkeypatch.setattr(store, "claim", answer_lost_after_commit)
    key = {"Idempotency-Key": "lost-answer"}
    first = await client.post("/scheduler/jobs/m/run", headers=key)
    assert lost == ["claim"]
    assert first.status_code == 503, first.text  # the caller cannot know it was committed
    again = await client.post("/scheduler/jobs/m/run", headers=key)
    assert again.status_code == 200, again.text
    await settled(runtime)
    assert len(marks.read_text().splitlines()) == 1  # ran, and once
    runs = (await client.get("/scheduler/jobs/m/runs")).json()["runs"]
    assert [(r["id"], r["status"]) for r in runs] == [(again.json()["run"]["id"], "success")]
