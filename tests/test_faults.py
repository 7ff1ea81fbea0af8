"""Faults: the database goes away (a PostgreSQL server stopped, an immutable SQLite
file), and values no database accepts as they are.

While the database refuses writes, every change answers 503 with Retry-After and
is applied nowhere; firing stops and resumes by itself; and the scheduled times
of the outage are accounted for once it is back.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from flask import Flask

from tests import jobs
from tests.conftest import AUTH, Cluster, Server, serve, wait_until
from tests.test_cluster import (
    FAST,
    _utc,
    add,
    assert_each_time_once,
    expected_times,
    live,
    marks,
    runs,
    tick_job,
    whole_second,
)

pytestmark = pytest.mark.timeout(120)


def ready(server: Server) -> int:
    try:
        return httpx.get(f"{server.url}/readyz", timeout=10).status_code
    except httpx.ConnectError:
        code = server.process.wait(timeout=10)  # -7: SIGBUS
        server.ended.wait(timeout=10)
        raise AssertionError(f"the server exited ({code}):\n{server.output()[-3000:]}") from None


def refused_while_down(server: Server) -> None:
    """Every change answers 503 with Retry-After and a JSON reason."""
    client = httpx.Client(base_url=server.url, headers=AUTH, timeout=15)
    with client:
        for method, path, body in (
            (
                "POST",
                "/scheduler/jobs",
                {"id": "ghost", "func": "tests.jobs:record", "args": ["g"]},
            ),
            ("POST", "/scheduler/jobs/tick/pause", {"note": "never applied"}),
            ("PATCH", "/scheduler/jobs/tick", {"name": "renamed"}),
            ("POST", "/scheduler/pause", None),
        ):
            response = client.request(method, path, json=body)
            assert response.status_code == 503, (path, response.text)
            assert int(response.headers["Retry-After"]) > 0
            assert "database is unavailable" in response.json()["error_message"]
            assert "Traceback" not in response.text and "OperationalError" not in response.text


def check_recovery(server: Server, url: str, path: Path, start: datetime, up_at: datetime) -> None:
    """Nothing refused was applied, firing resumed, every time of the outage is recorded."""
    wait_until(lambda: ready(server) == 200, timeout=30, what="readiness after the outage")
    wait_until(
        lambda: len([m for m in marks(path) if datetime.fromisoformat(m[0]) > up_at]) >= 2,
        timeout=30,
        what="firing after the outage",
    )
    job = httpx.get(f"{server.url}/scheduler/jobs/tick", headers=AUTH, timeout=10).json()
    assert job["paused"] is False and job["name"] == "tick" and job["note"] is None
    listed = httpx.get(f"{server.url}/scheduler/jobs", headers=AUTH, timeout=10).json()
    assert [j["id"] for j in listed] == ["tick"]
    info = httpx.get(f"{server.url}/scheduler", headers=AUTH, timeout=10).json()
    assert info["state"] == "running"
    httpx.delete(f"{server.url}/scheduler/jobs/tick", headers=AUTH, timeout=10)
    found = runs(url, "tick")
    last = max(r.scheduled_for.replace(tzinfo=UTC) if r.scheduled_for.tzinfo is None
               else r.scheduled_for for r in found)  # fmt: skip
    times = [t for t in expected_times(start, 200) if t <= last]
    assert_each_time_once(url, "tick", times, path)
    missed = [r for r in found if r.status == "missed"]
    assert missed, "the outage left no missed record"
    assert {r.reason for r in missed} <= {"coalesced", "database_unavailable", "late"}
    assert server.process.poll() is None, "the server exited"


@pytest.mark.postgres
def test_postgres_outage_refuses_changes_and_catches_up(
    hypercorn_server: Callable[..., Server], pg_cluster: Cluster, tmp_path: Path
) -> None:
    path = tmp_path / "marks"
    server = hypercorn_server(ASYNCAPP_DATABASE_URL=pg_cluster.url, **FAST)
    start = whole_second(0.5)
    add(server, tick_job("tick", path, start, None))
    wait_until(lambda: len(marks(path)) >= 2, what="two starts")

    pg_cluster.stop()
    wait_until(lambda: ready(server) == 503, what="readiness to fail")
    refused_while_down(server)
    response = httpx.get(f"{server.url}/scheduler/jobs", headers=AUTH, timeout=15)
    assert response.status_code == 503
    before = len(marks(path))
    time.sleep(3)  # an outage spanning several scheduled times
    assert len(marks(path)) == before, "a run started while no claim could be written"
    pg_cluster.start()
    up_at = datetime.now(UTC)
    check_recovery(server, pg_cluster.url, path, start, up_at)
    assert server.stop() == 0


def sqlite_files(database: Path) -> list[str]:
    """The database file and whichever of its journal, WAL and WAL index exist."""
    found = [database, *(Path(f"{database}{suffix}") for suffix in ("-journal", "-wal", "-shm"))]
    return [str(file) for file in found if file.exists()]


def patch(server: Server, name: str) -> httpx.Response:
    """Rename the job ``probe``: a change to commit that is not the ticking job's."""
    return httpx.patch(
        f"{server.url}/scheduler/jobs/probe", json={"name": name}, headers=AUTH, timeout=15
    )


def ready_again(server: Server, what: str, timeout: float = 10) -> None:
    try:
        wait_until(lambda: ready(server) == 200, timeout=timeout, what=what)
    except AssertionError as exc:
        answer = httpx.get(f"{server.url}/readyz", timeout=10).text
        raise AssertionError(f"{exc}: {answer}\n{server.output()[-4000:]}") from None


def still_alive(server: Server) -> None:
    assert server.process.poll() is None, f"a server died:\n{server.output()}"
    assert "Fatal Python error" not in server.output()


@pytest.mark.timeout(240)
def test_immutable_sqlite_file_refuses_changes_and_catches_up(
    hypercorn_server: Callable[..., Server], tmp_path: Path
) -> None:
    """Two servers on one file, made immutable six times while a job fires each second:
    no server dies (SIGBUS from a memory-mapped page), both refuse changes while it
    lasts, and both are ready and commit changes again within seconds after it."""
    database = tmp_path / "frozen.db"
    url = f"sqlite:///{database}"
    path = tmp_path / "marks"
    servers = [hypercorn_server(ASYNCAPP_DATABASE_URL=url, **FAST) for _ in range(2)]
    wait_until(lambda: len(live(servers[0])) == 2, what="two servers")
    start = whole_second(0.5)
    add(servers[0], tick_job("tick", path, start, None))
    probe = {"id": "probe", "func": "tests.jobs:record", "args": ["p"], "trigger": "interval"}
    add(servers[0], probe | {"hours": 1})
    wait_until(lambda: len(marks(path)) >= 2, what="two starts")

    for cycle in range(6):
        files = sqlite_files(database)
        subprocess.run(["chattr", "+i", *files], check=True)
        try:
            for server in servers:
                wait_until(lambda s=server: ready(s) == 503, what=f"fault {cycle}: readiness")
                refused = patch(server, f"refused {cycle}")
                assert refused.status_code == 503, refused.text
            if cycle == 0:
                refused_while_down(servers[1])
                before = len(marks(path))
                time.sleep(3)  # an outage spanning several scheduled times
                assert len(marks(path)) == before, "a run started while no claim could be written"
        finally:
            subprocess.run(["chattr", "-i", *files], check=True)
        up_at = datetime.now(UTC)
        for server in servers:
            ready_again(server, what=f"recovery {cycle}")
            committed = patch(server, f"probe {cycle}")
            assert committed.status_code == 200, committed.text
        wait_until(
            lambda up=up_at: any(datetime.fromisoformat(m[0]) > up for m in marks(path)),
            timeout=10,
            what=f"firing after fault {cycle}",
        )
        for server in servers:
            still_alive(server)

    job = httpx.get(f"{servers[0].url}/scheduler/jobs/probe", headers=AUTH, timeout=10).json()
    assert job["name"] == "probe 5"
    httpx.delete(f"{servers[0].url}/scheduler/jobs/tick", headers=AUTH, timeout=10)
    for server in servers:
        assert server.stop() == 0
        assert "Fatal Python error" not in server.output()
    found = runs(url, "tick")
    last = max(_utc(r.scheduled_for) for r in found)
    assert_each_time_once(url, "tick", [t for t in expected_times(start, 300) if t <= last], path)
    # Every start the job itself wrote down ended as a success in the history: no
    # result lost, nobody presumed dead for having waited like everyone else.
    succeeded = {r.id for r in found if r.status == "success"}
    assert {run_id for _, _, run_id, _ in marks(path)} == succeeded
    missed = [r for r in found if r.status == "missed"]
    assert missed, "the faults left no missed record"
    # overlap: the run before the fault ended on one server, whose result waited for
    # the database, while the other claimed the next time and found it in progress.
    assert {r.reason for r in missed} <= {"coalesced", "database_unavailable", "late", "overlap"}


def test_a_run_whose_end_died_with_its_process_is_unknown_not_interrupted(
    hypercorn_server: Callable[..., Server], tmp_path: Path
) -> None:
    """The process ran the body to its end, but was killed while the database refused
    the result: the survivor records the run ``unknown``, never ``interrupted``."""
    database = tmp_path / "killed.db"
    url = f"sqlite:///{database}"
    path = tmp_path / "marks"
    victim = hypercorn_server(ASYNCAPP_DATABASE_URL=url, **FAST)
    add(victim, tick_job("slow", path, whole_second(0.5), 1, kwargs={"seconds": 2}))
    ((_, _, run_id, _),) = wait_until(lambda: marks(path), what="the start")
    files = sqlite_files(database)
    subprocess.run(["chattr", "+i", *files], check=True)
    try:
        victim.wait_for(f"run {run_id} succeeded", timeout=15)
        assert [r.status for r in runs(url, "slow")] == ["running"], "the end was written"
        victim.process.kill()
        victim.process.wait(timeout=10)
    finally:
        subprocess.run(["chattr", "-i", *files], check=True)

    survivor = hypercorn_server(ASYNCAPP_DATABASE_URL=url, **FAST)
    (ended,) = wait_until(
        lambda: [r for r in runs(url, "slow") if r.status != "running"],
        timeout=20,
        what="the orphan reaped",
    )
    assert (ended.id, ended.status) == (run_id, "unknown")
    assert "may have finished" in ended.error_message
    assert survivor.stop() == 0


async def test_readyz_is_503_while_the_database_refuses_writes_though_reads_work(
    make_app: Callable[..., Flask], db_url: str
) -> None:
    # No heartbeat during the test: the outage is told by the requests below alone.
    app = make_app(heartbeat_interval=30, process_timeout=60)
    job = {"id": "j", "func": "tests.jobs:record", "args": ["j"], "trigger": "interval", "hours": 1}
    async with serve(app) as client:
        client.headers.update(AUTH)
        assert (await client.get("/readyz")).json() == {"ready": True, "problems": []}
        database = Path(db_url.removeprefix("sqlite:///"))
        files = sqlite_files(database)
        subprocess.run(["chattr", "+i", *files], check=True)
        try:
            assert (await client.post("/scheduler/jobs", json=job)).status_code == 503
            # An immutable file still answers reads: they must not pass for a recovery.
            assert (await client.get("/scheduler/jobs")).json() == []
            response = await client.get("/readyz")
            assert response.status_code == 503
            assert response.json() == {"ready": False, "problems": ["the database is unavailable"]}
        finally:
            subprocess.run(["chattr", "-i", *files], check=True)
        assert (await client.get("/readyz")).status_code == 503, "no write has succeeded yet"
        assert (await client.post("/scheduler/jobs", json=job)).status_code == 200
        assert (await client.get("/readyz")).json() == {"ready": True, "problems": []}


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest, db_url: str) -> str:
    if request.param == "sqlite":
        return db_url
    return str(request.getfixturevalue("pg_url"))


async def test_poison_values_in_errors_cannot_stop_writes(
    url: str, make_app: Callable[..., Flask]
) -> None:
    jobs.reset()
    app = make_app(database_url=url)
    async with serve(app) as client:
        runtime = app.extensions["asyncapp"].runtime
        for kind in jobs.POISONS:
            body = {"id": kind, "func": "tests.jobs:poison", "args": [kind]}
            response = await client.post("/scheduler/jobs", json=body, headers=AUTH)
            assert response.status_code == 200, response.text
            await jobs.wait_fired(f"poison:{kind}")
        await runtime.dispatcher.drain(10)
        assert await runtime.recorder.flush(10)
        page = (await client.get("/scheduler/runs", headers=AUTH)).json()
        after = await client.post(
            "/scheduler/jobs",
            json={"id": "after", "func": "tests.jobs:record", "args": ["after"]},
            headers=AUTH,
        )
        assert after.status_code == 200, after.text
        await jobs.wait_fired("after")
        assert (await client.get("/readyz")).status_code == 200

    by_job: dict[str, Any] = {run["job_id"]: run for run in page["runs"]}
    assert {k: by_job[k]["status"] for k in jobs.POISONS} == dict.fromkeys(jobs.POISONS, "error")
    assert by_job["surrogate"]["error_message"] == "lone \\ud800 surrogate"
    assert by_job["nul"]["error_message"] == "a NUL \\x00 byte"
    assert len(by_job["huge"]["error_message"]) == 2000
