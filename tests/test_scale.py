"""Scale-out across real processes: each process plans and claims only its share of
the jobs, and the sweep takes the due times of a share whose owner is frozen, killed
or gone, within 2 s, never running a time twice.

Jobs are ``tests.jobs:mark`` labelled with their job id, so the lines the job bodies
write say which process ran which (job, scheduled time), outside the database.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from asyncapp.engine.cache import owns
from tests.conftest import AUTH, Server, wait_until
from tests.test_cluster import _utc, add, live, marks, runs, tick_job, whole_second

pytestmark = pytest.mark.timeout(120)

#: Quick heartbeats, so shares follow the live processes within half a second; a
#: process timeout far longer than any test's freeze, so only the sweep can take a
#: frozen or killed owner's times (the reaper never declares it dead meanwhile).
SLOW_DEATH = {"ASYNCAPP_HEARTBEAT_INTERVAL": "0.5", "ASYNCAPP_PROCESS_TIMEOUT": "60"}
FAST = {"ASYNCAPP_HEARTBEAT_INTERVAL": "0.5", "ASYNCAPP_PROCESS_TIMEOUT": "2"}


def job_ids(prefix: str, count: int) -> list[str]:
    ids = [f"{prefix}{n}" for n in range(count)]
    # With two processes, either may hold index 0: both halves must have jobs.
    assert {owns(job_id, (0, 2)) for job_id in ids} == {True, False}
    return ids


def add_ticks(
    servers: list[Server], ids: list[str], path: Path, start: datetime, count: int | None
) -> None:
    """Add a ``tick`` job per id, eight at a time, through the servers in turn."""
    with ThreadPoolExecutor(8) as pool:
        list(
            pool.map(
                lambda n: add(
                    servers[n % len(servers)],
                    tick_job(ids[n], path, start, count, args=[str(path), ids[n]]),
                ),
                range(len(ids)),
            )
        )


def attempted(server: Server) -> dict[str, float]:
    """``asyncapp_claims_attempted_total`` of ``server``'s process, by path."""
    text = httpx.get(f"{server.url}/metrics", headers=AUTH, timeout=10).text
    found = re.findall(r'^asyncapp_claims_attempted_total\{path="(\w+)"\} (\S+)$', text, re.M)
    return {"share": 0.0, "sweep": 0.0} | {path: float(value) for path, value in found}


def shared(server: Server, count: int) -> bool:
    """Whether ``server`` sees ``count`` live processes and fires a share of that count."""
    response = httpx.get(f"{server.url}/scheduler", headers=AUTH, timeout=10).json()
    return len(response["processes"]) == count and response["process"]["share"][1] == count


def at_half_second() -> None:
    """Sleep to the middle of a second: ``tick`` jobs are due on whole seconds, so no
    claim transaction is open then (a process frozen inside one would hold its rows)."""
    now = time.time()
    time.sleep((0.5 - now % 1) % 1)


def owners(path: Path) -> dict[str, int]:
    """The pid that ran each job most recently, from the marks."""
    return {label: pid for _, pid, _, label in marks(path)}


def latest(path: Path) -> datetime:
    """The latest scheduled time any job body marked."""
    return max(datetime.fromisoformat(scheduled) for scheduled, *_ in marks(path))


def marks_by_key(path: Path) -> Counter[tuple[str, datetime]]:
    return Counter(
        (label, datetime.fromisoformat(scheduled)) for scheduled, _, _, label in marks(path)
    )


def ledger(url: str, ids: list[str]) -> dict[str, list[Any]]:
    return {job_id: runs(url, job_id) for job_id in ids}


@pytest.mark.postgres
def test_two_servers_each_plan_and_claim_only_their_share(
    hypercorn_server: Callable[..., Server], pg_url: str, tmp_path: Path
) -> None:
    path = tmp_path / "marks"
    start = whole_second(30)  # two servers starting, on a busy machine
    declared = {
        "ASYNCAPP_JOB_MODULES": "tests.jobs_scale",
        "SCALE_JOBS": "200",
        "SCALE_COUNT": "3",
        "SCALE_START": str(start.timestamp()),
        "SCALE_MARKS": str(path),
    }
    servers = [hypercorn_server(ASYNCAPP_DATABASE_URL=pg_url, **FAST, **declared) for _ in range(2)]
    wait_until(lambda: all(shared(s, 2) for s in servers), what="two servers sharing")
    before = [attempted(s) for s in servers]
    print(f"the servers shared the jobs {(start - datetime.now(UTC)).total_seconds():.1f} s early")
    assert datetime.now(UTC) < start, "the servers started later than the jobs' first time"
    ids = [f"s{n}" for n in range(200)]

    wait_until(lambda: len(marks(path)) >= 600, timeout=60, what="600 starts")
    wait_until(
        lambda: (
            sum(r.status == "success" for rs in ledger(pg_url, ids).values() for r in rs) == 600
        ),
        what="600 successful runs",
    )
    after = [attempted(s) for s in servers]

    assert set(marks_by_key(path).values()) == {1} and len(marks_by_key(path)) == 600
    by_process = Counter(r.process_id for rs in ledger(pg_url, ids).values() for r in rs)
    assert len(by_process) == 2 and all(150 <= n <= 450 for n in by_process.values()), by_process
    share = [a["share"] - b["share"] for a, b in zip(after, before, strict=True)]
    sweep = [a["sweep"] - b["sweep"] for a, b in zip(after, before, strict=True)]
    print(f"claims attempted per process: share {share}, sweep {sweep}; runs {by_process}")
    # Each process tried its half of the 600 times; before shares, each tried all 600.
    assert sum(share) == 600, share
    assert all(150 <= n <= 450 for n in share), share
    for server in servers:
        assert server.stop() == 0


@pytest.mark.postgres
def test_a_frozen_owner_s_times_run_elsewhere_within_2_s_and_none_twice_after_it_thaws(
    hypercorn_server: Callable[..., Server], pg_url: str, tmp_path: Path
) -> None:
    path = tmp_path / "marks"
    servers = [hypercorn_server(ASYNCAPP_DATABASE_URL=pg_url, **SLOW_DEATH) for _ in range(2)]
    wait_until(lambda: all(shared(s, 2) for s in servers), what="two servers sharing")
    ids = job_ids("t", 10)
    start = whole_second(1.5)
    add_ticks(servers, ids, path, start, None)
    wait_until(
        lambda: set(owners(path)) == set(ids) and len(set(owners(path).values())) == 2,
        what="every job firing, on both servers",
    )
    frozen, other = servers
    theirs = sorted(j for j, pid in owners(path).items() if pid == frozen.process.pid)
    assert theirs

    at_half_second()
    frozen.process.send_signal(signal.SIGSTOP)
    stopped_at = datetime.now(UTC)
    try:
        time.sleep(5)  # the freeze itself: five of its due times pass
        assert len(live(other)) == 2, "the frozen process was declared dead: not the case tested"
    finally:
        frozen.process.send_signal(signal.SIGCONT)
    thawed_at = datetime.now(UTC)
    wait_until(
        lambda: latest(path) > thawed_at + timedelta(seconds=3),
        what="three seconds of firing after the thaw",
    )
    for job_id in ids:
        httpx.delete(f"{other.url}/scheduler/jobs/{job_id}", headers=AUTH, timeout=10)

    found = ledger(pg_url, ids)
    counted = marks_by_key(path)
    assert set(counted.values()) == {1}, [k for k, n in counted.items() if n > 1]
    late = []
    for job_id in theirs:
        rows = found[job_id]
        first_time = min(_utc(r.scheduled_for) for r in rows)
        last = max(_utc(r.scheduled_for) for r in rows)
        assert first_time < stopped_at, (job_id, first_time)
        every = [
            first_time + timedelta(seconds=i)
            for i in range(int((last - first_time).total_seconds()) + 1)
        ]
        assert sorted(_utc(r.scheduled_for) for r in rows) == every, job_id
        for row in rows:
            due = _utc(row.scheduled_for)
            if stopped_at < due < thawed_at:
                assert row.status == "success" and (job_id, due) in counted, (job_id, due)
                late.append((_utc(row.started_at) - due).total_seconds())
    print(f"frozen owner: {len(late)} of its times run elsewhere, lateness max {max(late):.3f} s")
    assert len(late) >= 4 * len(theirs)
    assert max(late) < 2.0, late
    ran_by = {pid for _, pid, _, label in marks(path) if label in theirs}
    assert other.process.pid in ran_by
    for server in servers:
        assert server.stop() == 0


def test_kill_9_of_the_owner_its_next_due_times_are_taken_within_2_s(
    hypercorn_server: Callable[..., Server], tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'kill.db'}"
    path = tmp_path / "marks"
    servers = [hypercorn_server(ASYNCAPP_DATABASE_URL=url, **SLOW_DEATH) for _ in range(2)]
    wait_until(lambda: all(shared(s, 2) for s in servers), what="two servers sharing")
    ids = job_ids("k", 10)
    start = whole_second(1.5)
    add_ticks(servers, ids, path, start, None)
    wait_until(
        lambda: set(owners(path)) == set(ids) and len(set(owners(path).values())) == 2,
        what="every job firing, on both servers",
    )
    victim, survivor = servers
    theirs = sorted(j for j, pid in owners(path).items() if pid == victim.process.pid)

    at_half_second()
    os.kill(victim.process.pid, signal.SIGKILL)
    killed_at = datetime.now(UTC)
    victim.process.wait(timeout=10)
    wait_until(
        lambda: all(
            sum(1 for _, pid, _, label in marks(path) if label == j and pid == survivor.process.pid)
            >= 3
            for j in theirs
        ),
        what="three runs of each of the victim's jobs by the survivor",
    )
    for job_id in ids:
        httpx.delete(f"{survivor.url}/scheduler/jobs/{job_id}", headers=AUTH, timeout=10)

    counted = marks_by_key(path)
    assert set(counted.values()) == {1}
    after_kill, first_after = [], []
    for job_id in theirs:
        rows = [r for r in runs(url, job_id) if _utc(r.scheduled_for) > killed_at]
        assert rows and all(r.status == "success" for r in rows[:3]), rows
        first_after.append((_utc(rows[0].started_at) - _utc(rows[0].scheduled_for)).total_seconds())
        after_kill.append((_utc(rows[0].started_at) - killed_at).total_seconds())
    print(
        f"kill -9: the victim's next due time started {max(first_after):.3f} s after it was "
        f"due (max of {len(theirs)} jobs), {max(after_kill):.3f} s after the kill"
    )
    assert max(first_after) < 2.0, first_after
    assert len(live(survivor)) == 2  # taken by the sweep: the victim was not declared dead
    assert survivor.stop() == 0


@pytest.mark.postgres
def test_a_process_joining_then_one_leaving_leaves_each_time_one_run_or_missed_record(
    hypercorn_server: Callable[..., Server], pg_url: str, tmp_path: Path
) -> None:
    path = tmp_path / "marks"
    first, second = (hypercorn_server(ASYNCAPP_DATABASE_URL=pg_url, **FAST) for _ in range(2))
    wait_until(lambda: shared(first, 2) and shared(second, 2), what="two servers sharing")
    ids = job_ids("r", 20)
    start = whole_second(2)
    add_ticks([first, second], ids, path, start, None)
    wait_until(
        lambda: set(owners(path)) == set(ids) and len(set(owners(path).values())) == 2,
        what="every job firing, on both servers",
    )

    wait_until(lambda: set(owners(path)) == set(ids), what="every job firing")
    joined_at = datetime.now(UTC)
    third = hypercorn_server(ASYNCAPP_DATABASE_URL=pg_url, **FAST)
    wait_until(lambda: all(shared(s, 3) for s in (first, second, third)), what="three sharing")
    wait_until(lambda: third.process.pid in owners(path).values(), what="the new process firing")
    time.sleep(2)  # firing by three processes for a while
    assert second.stop() == 0  # leaves: its share goes to the other two
    wait_until(lambda: shared(first, 2) and shared(third, 2), what="two sharing again")
    left_at = datetime.now(UTC)
    wait_until(
        lambda: latest(path) > left_at + timedelta(seconds=3),
        what="three seconds of firing after the leave",
    )
    for job_id in ids:
        httpx.delete(f"{first.url}/scheduler/jobs/{job_id}", headers=AUTH, timeout=10)

    counted = marks_by_key(path)
    assert set(counted.values()) == {1}, [k for k, n in counted.items() if n > 1]
    for job_id, rows in ledger(pg_url, ids).items():
        times = [_utc(r.scheduled_for) for r in rows]
        # From its first time (a job added after ``start`` begins at its next second),
        # which came before the third process joined, to its last.
        first_time, last = min(times), max(times)
        assert first_time < joined_at, (job_id, first_time)
        every = [
            first_time + timedelta(seconds=i)
            for i in range(int((last - first_time).total_seconds()) + 1)
        ]
        assert sorted(times) == every, (job_id, sorted(set(every) - set(times)))
        for row in rows:
            key = (job_id, _utc(row.scheduled_for))
            assert row.status in ("success", "missed"), (key, row.status)
            assert (row.status == "success") == (key in counted), key
    pids = {pid for _, pid, _, _ in marks(path)}
    assert {first.process.pid, second.process.pid, third.process.pid} <= pids
    for server in (first, third):
        assert server.stop() == 0
