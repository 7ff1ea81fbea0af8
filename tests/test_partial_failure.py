"""The cluster under partial failure (issue 16): a kill -9 during a retry backoff, a row
lock held on one job, a write lock held past the process timeout, "run now" racing a
scheduled claim, and a run left ``running`` with no task.

Each test runs real Hypercorn processes on a real database and asserts from the
job's own marks (``tests.jobs:mark`` and friends write a line per start), not only
from the run history.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from sqlalchemy import create_engine, insert

from asyncapp.store.tables import runs_table
from tests.conftest import AUTH, Server, wait_until
from tests.test_cluster import FAST, add, live, marks, rows, tick_job, whole_second

pytestmark = pytest.mark.timeout(120)


def ready(server: Server) -> int:
    return httpx.get(f"{server.url}/readyz", timeout=10).status_code


def heartbeat_of(url: str, server: Server) -> float:
    found = rows(url, "SELECT heartbeat_at FROM asyncapp_processes WHERE pid = :pid",
                 pid=server.process.pid)  # fmt: skip
    return float(found[0].heartbeat_at) if found else 0.0


# -- item 3: reaping isolates each orphan; attempts numbered from one source ---------


def test_kill_9_during_a_retry_backoff_is_reaped_and_rerun_while_heartbeats_go_on(
    hypercorn_server: Callable[..., Server], tmp_path: Path
) -> None:
    """Before: the reaper inserted the attempt the dead process had already kept, the
    primary-key error rolled back the survivor's every heartbeat, the orphan stayed
    running and ``/readyz`` said the heartbeat failed."""
    url = f"sqlite:///{tmp_path / 'pair.db'}"
    env = {**FAST, "ASYNCAPP_DATABASE_URL": url, "ASYNCAPP_RETRY_BACKOFF": "120"}
    servers = [hypercorn_server(**env) for _ in range(2)]
    wait_until(lambda: len(live(servers[0])) == 2, what="two servers")
    path = tmp_path / "marks"
    # Once an hour from a few seconds from now (time enough to add it, even on a
    # busy machine): the job outlives its first run.
    body = {"id": "flaky", "func": "tests.jobs:mark_attempt", "args": [str(path)],
            "trigger": "interval", "hours": 1, "start_date": whole_second(3.0).isoformat(),
            "retries": 1, "rerun_interrupted": True}  # fmt: skip
    add(servers[0], body)
    first = wait_until(lambda: marks(path), what="the first attempt")
    _, pid, run_id, label = first[0]
    assert label == "attempt1"
    # The failed first attempt is kept: the run now waits out its backoff (60-120 s).
    wait_until(
        lambda: rows(url, "SELECT * FROM asyncapp_attempts WHERE run_id = :r", r=run_id),
        what="the failed attempt kept",
    )
    victim = next(s for s in servers if s.process.pid == pid)
    survivor = next(s for s in servers if s is not victim)
    os.kill(pid, signal.SIGKILL)
    victim.process.wait(timeout=10)

    rerun = wait_until(
        lambda: [m for m in marks(path) if m[1] == survivor.process.pid],
        timeout=30,
        what="the survivor re-running the orphan",
    )
    assert [(m[2], m[3]) for m in rerun] == [(run_id, "attempt3")]
    ended = wait_until(
        lambda: rows(url, "SELECT * FROM asyncapp_runs WHERE id = :r AND status = 'success'",
                     r=run_id),
        what="the re-run to succeed",
    )  # fmt: skip
    assert ended[0].attempt == 3
    kept = rows(url, "SELECT attempt, status FROM asyncapp_attempts WHERE run_id = :r "
                "ORDER BY attempt", r=run_id)  # fmt: skip
    assert [(a.attempt, a.status) for a in kept] == [(1, "error"), (2, "unknown")]
    assert len(marks(path)) == 2, "a body ran twice"

    # The survivor goes on heartbeating, alone, and is ready.
    beat = heartbeat_of(url, survivor)
    wait_until(lambda: heartbeat_of(url, survivor) > beat, what="a later heartbeat")
    assert [p["pid"] for p in live(survivor)] == [survivor.process.pid]
    assert ready(survivor) == 200
    assert "heartbeat failed" not in survivor.output()
    assert survivor.stop() == 0


# -- item 5: max_instances counted after the lock ------------------------------------


def spans(path: Path) -> list[tuple[float, float, int]]:
    """(start, end, pid) of each body ``tests.jobs:span`` ran (a run re-run by another
    process is two bodies); a body still running ends at +inf."""
    starts: dict[tuple[str, int], float] = {}
    ends: dict[tuple[str, int], float] = {}
    for line in path.read_text().splitlines() if path.exists() else []:
        phase, at, pid, run_id, _ = line.split(" ")
        (starts if phase == "start" else ends)[run_id, int(pid)] = float(at)
    return sorted((at, ends.get(key, float("inf")), key[1]) for key, at in starts.items())


def most_at_once(found: list[tuple[float, float, int]]) -> int:
    edges = sorted([(start, 1) for start, _, _ in found] + [(end, -1) for _, end, _ in found])
    peak = now = 0
    for _, step in edges:
        now += step
        peak = max(peak, now)
    return peak


@pytest.mark.postgres
def test_run_now_racing_a_scheduled_claim_never_starts_two_runs(
    hypercorn_server: Callable[..., Server], pg_url: str, tmp_path: Path
) -> None:
    """Before: both waited for the job's row lock; the second to get it counted the
    runs in progress from before its wait, and a ``max_instances: 1`` job ran twice."""
    # Default timings: a lock wait may last 5 s, longer than this test holds the lock.
    first, second = (hypercorn_server(ASYNCAPP_DATABASE_URL=pg_url) for _ in range(2))
    wait_until(lambda: len(live(first)) == 2, what="two servers")
    path = tmp_path / "spans"
    due = whole_second(4.0)
    body = {"id": "solo", "func": "tests.jobs:span", "args": [str(path), 6],
            "trigger": "interval", "minutes": 10, "start_date": due.isoformat(),
            "max_instances": 1, "misfire_grace_time": 60}  # fmt: skip
    add(first, body)

    holder = psycopg.connect(pg_url.replace("+psycopg", ""))
    try:
        # Another transaction holds the job's row across its due time: every claim of
        # it (the scheduled ones and the "run now") queues behind this lock.
        wait_until(lambda: datetime.now(UTC) > due - timedelta(seconds=1), what="due - 1 s")
        holder.execute("SELECT id FROM asyncapp_jobs WHERE id = 'solo' FOR UPDATE")
        blocker = holder.info.backend_pid
        answers: list[int] = []
        pool = ThreadPoolExecutor(1)
        run_now = pool.submit(
            lambda: httpx.post(f"{second.url}/scheduler/jobs/solo/run", headers=AUTH, timeout=60)
        )
        wait_until(
            lambda: rows(pg_url, "SELECT pid FROM pg_stat_activity "
                         "WHERE :b = ANY(pg_blocking_pids(pid))", b=blocker),
            what="the run now waiting for the lock",
        )  # fmt: skip
        # Past the due time: the scheduled claims have begun by now (and wait, or skip).
        wait_until(lambda: datetime.now(UTC) > due + timedelta(seconds=1.5), what="due time")
        holder.commit()
        answers.append(run_now.result(timeout=60).status_code)
        pool.shutdown()
    finally:
        holder.close()

    assert answers[0] in (200, 409), answers
    wait_until(lambda: spans(path) and all(end < float("inf") for _, end, _ in spans(path)),
               timeout=30, what="the runs to end")  # fmt: skip
    found = spans(path)
    assert most_at_once(found) == 1, found
    ledger = rows(pg_url, "SELECT status, reason FROM asyncapp_runs WHERE job_id = 'solo'")
    assert len([r for r in ledger if r.status != "missed"]) == len(found) == 1, ledger


# -- item 2: bounded waits ---------------------------------------------------------


@pytest.mark.postgres
def test_a_row_lock_held_on_one_job_delays_that_job_only(
    hypercorn_server: Callable[..., Server], pg_url: str, tmp_path: Path
) -> None:
    """Before: the claim of the locked job waited for the lock with no timeout, and
    every other job's claim queued behind it (an unrelated job stopped firing), and a
    PATCH of the locked job hung."""
    server = hypercorn_server(ASYNCAPP_DATABASE_URL=pg_url, **FAST)
    held_marks, free_marks = tmp_path / "held", tmp_path / "free"
    start = whole_second(0.5)
    add(server, tick_job("held", held_marks, start, None))
    add(server, tick_job("free", free_marks, start, None))
    wait_until(lambda: marks(held_marks) and marks(free_marks), what="both jobs firing")

    holder = psycopg.connect(pg_url.replace("+psycopg", ""))
    try:
        # A transaction left open holding one job's row (a frozen process, an operator).
        holder.execute("SELECT id FROM asyncapp_jobs WHERE id = 'held' FOR UPDATE")
        locked_at = datetime.now(UTC)
        asked = time.monotonic()
        patched = httpx.patch(f"{server.url}/scheduler/jobs/held", json={"name": "renamed"},
                              headers=AUTH, timeout=20)  # fmt: skip
        took = time.monotonic() - asked
        assert patched.status_code in (200, 503), patched.text
        assert took < 10, f"the PATCH took {took:.1f} s"

        def free_since_locked() -> list[Any]:
            return [m for m in marks(free_marks) if datetime.fromisoformat(m[0]) > locked_at]

        wait_until(lambda: len(free_since_locked()) >= 3, timeout=15,
                   what="the unrelated job firing while the other's row is held")  # fmt: skip
        assert ready(server) == 200, "a held row is not an outage"
    finally:
        holder.close()
    released_at = datetime.now(UTC)
    wait_until(
        lambda: [m for m in marks(held_marks) if datetime.fromisoformat(m[0]) > released_at],
        what="the held job firing again once released",
    )
    assert server.stop() == 0


# -- item 1: liveness that cannot be starved, and fencing ---------------------------


def test_a_sqlite_write_lock_held_past_the_timeout_declares_no_one_dead(
    hypercorn_server: Callable[..., Server], tmp_path: Path
) -> None:
    """Before: once the lock was released, the first process to write judged the other
    dead (its heartbeat was older than the timeout, as its own was), ended its run and
    ran the ``max_instances: 1`` job again while the first body still ran."""
    database = tmp_path / "pair.db"
    url = f"sqlite:///{database}"
    servers = [hypercorn_server(ASYNCAPP_DATABASE_URL=url, **FAST) for _ in range(2)]
    wait_until(lambda: len(live(servers[0])) == 2, what="two servers")
    ids = {p["id"] for p in live(servers[0])}
    path = tmp_path / "spans"
    body = {"id": "solo", "func": "tests.jobs:span", "args": [str(path), 3],
            "trigger": "interval", "seconds": 1, "start_date": whole_second(0.5).isoformat(),
            "max_instances": 1, "rerun_interrupted": True}  # fmt: skip
    add(servers[0], body)
    wait_until(lambda: spans(path), what="a first run")

    # Another connection holds SQLite's write lock (a backup, a migration tool) until
    # every process's heartbeat is older than the process timeout.
    holder = sqlite3.connect(database, isolation_level=None, timeout=30)
    try:
        holder.execute("BEGIN IMMEDIATE")
        wait_until(
            lambda: all(hb < time.time() - 3 for (hb,) in holder.execute(
                "SELECT heartbeat_at FROM asyncapp_processes").fetchall()),
            timeout=30,
            what="every heartbeat older than the process timeout",
        )  # fmt: skip
        held_to = datetime.now(UTC)
    finally:
        holder.close()

    # Both beat again, and the job goes on, one run at a time.
    wait_until(
        lambda: len([s for s in spans(path) if s[0] > held_to.timestamp()]) >= 2,
        timeout=30,
        what="two runs after the lock was released",
    )
    assert {p["id"] for p in live(servers[0])} == ids
    for server in servers:
        assert "presumed dead" not in server.output()
        assert "stopped heartbeating" not in server.output()
    found = spans(path)
    assert most_at_once(found) == 1, found
    statuses = rows(url, "SELECT status FROM asyncapp_runs WHERE job_id = 'solo'")
    assert "interrupted" not in {r.status for r in statuses}
    for server in servers:
        assert server.stop() == 0


def test_a_process_presumed_dead_abandons_its_runs_and_rejoins_as_a_new_incarnation(
    hypercorn_server: Callable[..., Server], tmp_path: Path
) -> None:
    """Before: it registered again under its old id, so its run (re-run by the others)
    still counted as its own, and it went on running it beside the re-run."""
    url = f"sqlite:///{tmp_path / 'pair.db'}"
    servers = [hypercorn_server(ASYNCAPP_DATABASE_URL=url, **FAST) for _ in range(2)]
    wait_until(lambda: len(live(servers[0])) == 2, what="two servers")
    path = tmp_path / "spans"
    body = {"id": "long", "func": "tests.jobs:span", "args": [str(path), 60],
            "trigger": "interval", "hours": 1, "start_date": whole_second(3.0).isoformat(),
            "rerun_interrupted": True}  # fmt: skip
    add(servers[0], body)
    (first,) = wait_until(lambda: spans(path), what="the run")
    frozen = next(s for s in servers if s.process.pid == first[2])
    other = next(s for s in servers if s is not frozen)
    old_id = next(p["id"] for p in live(other) if p["pid"] == frozen.process.pid)
    frozen.process.send_signal(signal.SIGSTOP)
    try:
        wait_until(
            lambda: [s for s in spans(path) if s[2] == other.process.pid],
            timeout=20,
            what="the other server re-running the run",
        )
    finally:
        frozen.process.send_signal(signal.SIGCONT)
    frozen.wait_for("presumed dead", timeout=15)
    # Its body is cancelled (an end line), and it rejoins under a new id.
    wait_until(lambda: spans(path)[0][2] == frozen.process.pid and spans(path)[0][1] < float("inf"),
               what="the frozen copy cancelled")  # fmt: skip
    rejoined = wait_until(
        lambda: [p["id"] for p in live(other) if p["pid"] == frozen.process.pid],
        what="the frozen process back in the live list",
    )
    assert rejoined != [old_id]
    assert "abandoning 1 runs" in frozen.output()
    running = [s for s in spans(path) if s[1] == float("inf")]
    assert [s[2] for s in running] == [other.process.pid]
    for server in servers:
        assert server.stop() == 0


# -- item 4: own rows reconciled ----------------------------------------------------


def test_a_running_row_of_this_process_with_no_task_here_is_interrupted(
    hypercorn_server: Callable[..., Server], tmp_path: Path
) -> None:
    """Before: it stayed ``running`` until the process exited, and its job's every
    time was missed as ``overlap``."""
    url = f"sqlite:///{tmp_path / 'one.db'}"
    server = hypercorn_server(ASYNCAPP_DATABASE_URL=url, **FAST)
    path = tmp_path / "marks"
    add(server, tick_job("tick", path, whole_second(0.5), None))
    wait_until(lambda: marks(path), what="a first run")
    (process_id,) = [p["id"] for p in live(server)]
    # What a claim whose commit was reported as failed, though it succeeded, leaves:
    # a run of this process, in progress by the ledger, that no task here runs.
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            insert(runs_table).values(
                id="stray", job_id="tick", scheduled_for=datetime(2026, 1, 1, tzinfo=UTC),
                started_at=datetime.now(UTC) - timedelta(seconds=30), status="running",
                node="n", process_id=process_id, attempt=1,
            )
        )  # fmt: skip
    engine.dispose()
    added = datetime.now(UTC)
    ended = wait_until(
        lambda: rows(url, "SELECT * FROM asyncapp_runs WHERE id = 'stray' "
                     "AND status = 'interrupted'"),
        timeout=15,
        what="the stray run interrupted",
    )  # fmt: skip
    assert ended
    # The job is not blocked: it fires again.
    wait_until(
        lambda: [m for m in marks(path) if datetime.fromisoformat(m[0]) > added],
        what="the job firing after the stray run",
    )
    assert server.stop() == 0
