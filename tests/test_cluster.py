"""Exactly once across real processes: Hypercorn workers, servers sharing PostgreSQL,
kill -9, SIGSTOP, and three servers starting together on a fresh database.

Each test schedules ``tests.jobs:mark``, which appends one line per start to a file
shared by the processes, so starts are counted outside the database as well as in
the run ledger.  Timings: heartbeat 0.5 s and process timeout 2 s keep failover quick.
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from sqlalchemy import create_engine, select, text

from asyncapp import create_app
from asyncapp.store.tables import runs_table
from tests.conftest import AUTH, PG_ADMIN_URL, Server, app_config, wait_until

pytestmark = pytest.mark.timeout(120)

FAST = {"ASYNCAPP_HEARTBEAT_INTERVAL": "0.5", "ASYNCAPP_PROCESS_TIMEOUT": "2"}


def rows(url: str, sql: str, **params: Any) -> list[Any]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(text(sql), params))
    finally:
        engine.dispose()


def runs(url: str, job_id: str) -> list[Any]:
    """The ledger rows of ``job_id`` (typed: datetimes parsed on SQLite too)."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            query = (
                select(runs_table)
                .where(runs_table.c.job_id == job_id)
                .order_by(runs_table.c.scheduled_for)
            )
            return list(conn.execute(query))
    finally:
        engine.dispose()


def marks(path: Path) -> list[tuple[str, int, str, str]]:
    """The lines ``tests.jobs:mark`` wrote: (scheduled time, pid, run id, label)."""
    if not path.exists():
        return []
    found = []
    for line in path.read_text().splitlines():
        scheduled, pid, run_id, *label = line.split(" ")
        found.append((scheduled, int(pid), run_id, " ".join(label)))
    return found


def whole_second(lead: float) -> datetime:
    """The first whole second at least ``lead`` seconds from now, UTC."""
    moment = datetime.now(UTC) + timedelta(seconds=lead)
    return moment.replace(microsecond=0) + timedelta(seconds=1)


def tick_job(
    job_id: str, path: Path, start: datetime, count: int | None, **options: Any
) -> dict[str, Any]:
    """A job marking ``path`` every second from ``start``, ``count`` times (None: forever)."""
    body: dict[str, Any] = {
        "id": job_id,
        "func": "tests.jobs:mark",
        "args": [str(path)],
        "trigger": "interval",
        "seconds": 1,
        "start_date": start.isoformat(),
        **options,
    }
    if count is not None:
        body["end_date"] = (start + timedelta(seconds=count - 0.5)).isoformat()
    return body


def add(server: Server, body: dict[str, Any]) -> dict[str, Any]:
    response = httpx.post(f"{server.url}/scheduler/jobs", json=body, headers=AUTH, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def live(server: Server) -> list[dict[str, Any]]:
    response = httpx.get(f"{server.url}/scheduler", headers=AUTH, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()["processes"]  # type: ignore[no-any-return]


def expected_times(start: datetime, count: int) -> list[datetime]:
    return [start + timedelta(seconds=i) for i in range(count)]


def assert_each_time_once(url: str, job_id: str, times: list[datetime], path: Path) -> None:
    """Every scheduled time has exactly one row, and was started at most once."""
    found = runs(url, job_id)
    by_time = Counter(_utc(row.scheduled_for) for row in found)
    assert sorted(by_time) == times, [str(t) for t in sorted(by_time)]
    assert set(by_time.values()) == {1}
    started = Counter(scheduled for scheduled, *_ in marks(path))
    assert all(count == 1 for count in started.values()), started


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# -- several workers, one database ---------------------------------------------------


def test_four_workers_on_one_sqlite_file_start_each_second_once(
    hypercorn_server: Callable[..., Server], tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    path = tmp_path / "marks"
    server = hypercorn_server(workers=4, ASYNCAPP_DATABASE_URL=url, **FAST)
    wait_until(lambda: len(live(server)) == 4, what="four worker processes")
    start = whole_second(1.5)
    add(server, tick_job("tick", path, start, 10))

    times = expected_times(start, 10)
    wait_until(
        lambda: len([r for r in runs(url, "tick") if r.status == "success"]) == 10,
        timeout=30,
        what="ten successful runs",
    )
    assert_each_time_once(url, "tick", times, path)
    assert len(marks(path)) == 10
    assert server.stop() == 0


@pytest.mark.postgres
def test_three_servers_on_one_postgres_database_start_each_time_once(
    hypercorn_server: Callable[..., Server], pg_url: str, tmp_path: Path
) -> None:
    path = tmp_path / "marks"
    servers = [hypercorn_server(ASYNCAPP_DATABASE_URL=pg_url, **FAST) for _ in range(3)]
    wait_until(lambda: len(live(servers[0])) == 3, what="three servers")
    start = whole_second(1.5)
    add(servers[1], tick_job("tick", path, start, 10))
    # Many jobs due at once: runs spread over the servers.
    burst_at = whole_second(3)
    for i in range(30):
        add(servers[2], tick_job(f"burst{i}", tmp_path / "burst", burst_at, 1))

    wait_until(
        lambda: len([r for r in runs(pg_url, "tick") if r.status == "success"]) == 10,
        timeout=30,
        what="ten successful runs",
    )
    assert_each_time_once(pg_url, "tick", expected_times(start, 10), path)
    burst = wait_until(
        lambda: len(marks(tmp_path / "burst")) >= 30 and marks(tmp_path / "burst"),
        what="the 30 jobs due at once",
    )
    assert len(burst) == 30
    assert len({pid for _, pid, _, _ in burst}) >= 2, "one server ran every due job"
    for server in servers:
        assert server.stop() == 0


@pytest.mark.postgres
def test_three_servers_start_together_on_a_fresh_database(
    hypercorn_server: Callable[..., Server],
) -> None:
    admin = psycopg.connect(PG_ADMIN_URL, autocommit=True)
    try:
        for _ in range(3):
            schema = f"t_{uuid.uuid4().hex[:12]}"
            admin.execute(f'CREATE SCHEMA "{schema}"')
            url = f"postgresql+psycopg://127.0.0.1:5432/test?options=-csearch_path%3D{schema}"
            try:
                servers = [
                    hypercorn_server(wait=False, ASYNCAPP_DATABASE_URL=url) for _ in range(3)
                ]
                for server in servers:
                    server.wait_for("Running on http://")
                first = servers[0]
                wait_until(lambda s=first: len(live(s)) == 3, what="three servers registered")
                for server in servers:
                    assert server.stop() == 0
                    assert "Traceback" not in server.output()
            finally:
                admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
    finally:
        admin.close()


# -- a process dies or freezes ---------------------------------------------------------


@pytest.fixture
def pair(
    hypercorn_server: Callable[..., Server], tmp_path: Path
) -> Iterator[tuple[str, list[Server]]]:
    """Two servers sharing one SQLite file, with quick heartbeats."""
    url = f"sqlite:///{tmp_path / 'pair.db'}"
    servers = [hypercorn_server(ASYNCAPP_DATABASE_URL=url, **FAST) for _ in range(2)]
    wait_until(lambda: len(live(servers[0])) == 2, what="two servers")
    yield url, servers


def test_kill_9_of_the_running_process_fails_over_and_its_run_ends_unknown(
    pair: tuple[str, list[Server]], tmp_path: Path
) -> None:
    url, servers = pair
    path = tmp_path / "marks"
    start = whole_second(1.0)
    # Each run takes 0.6 s of a 1 s period; max_instances 3 so that the dead
    # process's run, still "running" until it is reaped, does not block the next.
    add(servers[0], tick_job("tick", path, start, None, kwargs={"seconds": 0.6}, max_instances=3))
    first = wait_until(lambda: marks(path), what="a first start")
    _, pid, run_id, _ = first[0]
    victim = next(s for s in servers if s.process.pid == pid)
    survivor = next(s for s in servers if s is not victim)
    os.kill(pid, signal.SIGKILL)
    killed_at = datetime.now(UTC)
    victim.process.wait(timeout=10)

    def survivor_runs() -> list[Any]:
        return [r for r in marks(path) if r[1] == survivor.process.pid]

    taken = wait_until(lambda: len(survivor_runs()) >= 3 and survivor_runs(), what="failover")
    first_after = min(datetime.fromisoformat(r[0]) for r in taken)
    (first_run,) = [r for r in runs(url, "tick") if r.id == taken[0][2]]
    started = _utc(first_run.started_at)
    assert first_after > killed_at - timedelta(seconds=1)
    failover = (started - killed_at).total_seconds()
    print(f"failover: the survivor's first start came {failover:.3f} s after the kill")
    assert failover < 2.0, (killed_at, started)

    reaped = wait_until(
        lambda: [r for r in runs(url, "tick") if r.id == run_id and r.status == "unknown"],
        timeout=10,
        what="the killed run to be marked unknown",
    )
    assert reaped

    last = max(_utc(r.scheduled_for) for r in runs(url, "tick"))
    times = [t for t in expected_times(start, 60) if t <= last]
    httpx.delete(f"{survivor.url}/scheduler/jobs/tick", headers=AUTH, timeout=10)
    assert_each_time_once(url, "tick", times, path)


def test_sigstop_past_the_timeout_then_sigcont_starts_nothing_twice(
    pair: tuple[str, list[Server]], tmp_path: Path
) -> None:
    url, servers = pair
    path = tmp_path / "marks"
    start = whole_second(1.0)
    add(servers[0], tick_job("tick", path, start, None))
    first = wait_until(lambda: marks(path), what="a first start")
    frozen = next(s for s in servers if s.process.pid == first[0][1])
    other = next(s for s in servers if s is not frozen)
    frozen.process.send_signal(signal.SIGSTOP)
    try:
        wait_until(lambda: len(live(other)) == 1, timeout=10, what="the frozen one declared dead")
        before = len(marks(path))
        wait_until(lambda: len(marks(path)) >= before + 2, what="the other server firing")
    finally:
        frozen.process.send_signal(signal.SIGCONT)
    frozen.wait_for("presumed dead", timeout=15)
    after_thaw = len(marks(path))
    wait_until(lambda: len(marks(path)) >= after_thaw + 3, what="firing after the thaw")
    httpx.delete(f"{other.url}/scheduler/jobs/tick", headers=AUTH, timeout=10)

    last = max(_utc(r.scheduled_for) for r in runs(url, "tick"))
    times = [t for t in expected_times(start, 120) if t <= last]
    assert_each_time_once(url, "tick", times, path)
    for server in servers:
        assert server.stop() == 0


# -- the CLI against a firing server -------------------------------------------------


def test_cli_pause_modify_and_remove_are_honoured_by_a_firing_server(
    hypercorn_server: Callable[..., Server], tmp_path: Path
) -> None:
    """20 trials each; a change is never undone and nothing starts after it commits."""
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    path = tmp_path / "marks"
    hypercorn_server(ASYNCAPP_DATABASE_URL=url)
    runner = create_app(app_config(url)).test_cli_runner()

    def cli(*args: str) -> str:
        result = runner.invoke(args=["jobs", *args])
        assert result.exit_code == 0, result.output
        return result.output

    def add_tick(label: str) -> None:
        target = json.dumps(str(path))
        cli("add", "tests.jobs:mark", "--id", "tick", "--trigger", "interval",
            "--set", "seconds=0.25", "--arg", target, "--arg", json.dumps(label))  # fmt: skip

    def run_ids() -> set[str]:
        return {r.id for r in runs(url, "tick")}

    def claimed_since(before: set[str]) -> list[Any]:
        """Runs claimed after ``before`` was read, right after the change answered: the
        claim inserts the run's row, so a new row is a claim after the change.  Start
        times cannot say this (a claim stamps its time before it commits, so a run
        claimed just before a pause may start just after it).  The few milliseconds
        between the answer and the read are not watched; a server that ignored the
        change would claim about two more runs in the 0.6 s that follow."""
        return [r for r in runs(url, "tick") if r.id not in before]

    def more_marks(than: int) -> Callable[[], bool]:
        return lambda: len(marks(path)) > than

    def stored_tick() -> Any:
        found = rows(
            url, "SELECT next_run_time, version, data FROM asyncapp_jobs WHERE id = 'tick'"
        )
        return found[0] if found else None

    add_tick("v0")
    wait_until(lambda: marks(path), what="a first start")

    for _ in range(20):
        cli("pause", "tick")
        before, version = run_ids(), stored_tick().version
        time.sleep(0.6)  # over two periods: long enough for a firing server to claim it
        assert claimed_since(before) == []
        assert stored_tick().next_run_time is None and stored_tick().version == version
        count = len(marks(path))
        cli("resume", "tick")
        wait_until(more_marks(count), what="a start after resume")

    for trial in range(1, 21):
        label = f"v{trial}"
        cli("modify", "tick", "--arg", json.dumps(str(path)), "--arg", json.dumps(label))
        before = run_ids()
        after = wait_until(partial(claimed_since, before), what="a run after the change")
        run_id = after[0].id
        by_run = wait_until(
            lambda r=run_id: {m[2]: m[3] for m in marks(path) if m[2] == r}, what="its mark"
        )
        assert by_run[run_id] == label, (run_id, label)
        assert json.loads(stored_tick().data)["args"] == [str(path), label]

    for trial in range(20):
        cli("remove", "tick")
        before = run_ids()
        time.sleep(0.6)
        assert claimed_since(before) == []
        assert stored_tick() is None
        count = len(marks(path))
        add_tick(f"again{trial}")
        wait_until(more_marks(count), what="a start after adding it again")


@pytest.mark.parametrize(
    "database", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def test_a_change_reaches_every_process_within_a_second(
    hypercorn_server: Callable[..., Server],
    tmp_path: Path,
    request: pytest.FixtureRequest,
    database: str,
) -> None:
    url = (
        f"sqlite:///{tmp_path / 'feed.db'}"
        if database == "sqlite"
        else str(request.getfixturevalue("pg_url"))
    )
    writer, reader = (hypercorn_server(ASYNCAPP_DATABASE_URL=url) for _ in range(2))

    def cached_by_reader() -> int:
        response = httpx.get(f"{reader.url}/scheduler", headers=AUTH, timeout=10)
        return int(response.json()["process"]["jobs"])

    delays = []
    for i in range(5):
        body = {"id": f"j{i}", "func": "tests.jobs:record", "args": ["x"], "trigger": "interval",
                "hours": 1}  # fmt: skip
        committed = time.monotonic()
        add(writer, body)
        wait_until(lambda n=i + 1: cached_by_reader() == n, timeout=5, what="the change")
        delays.append(time.monotonic() - committed)
    print(f"change propagation on {database}: max {max(delays):.3f} s of {len(delays)}")
    assert max(delays) < 1.0, delays
