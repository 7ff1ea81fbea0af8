"""Narrow windows (issue 16 item 5): a change committed between a time's planning and
its claim, a deploy across a declared job's due time, a pause or a new trigger while
every server is down, and the backlog after a stall.

Each scheduled time must end as one run or one missed record with the right reason;
the job bodies (``tests.jobs:mark``) write a line per start, the ground truth that
nothing ran twice and that what should run ran.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from click.testing import Result
from flask import Flask

from tests.conftest import AUTH, Server, wait_until
from tests.test_cluster import FAST, add, marks, rows, runs, tick_job, whole_second

pytestmark = pytest.mark.timeout(120)


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def ledger(url: str, job_id: str) -> dict[datetime, Any]:
    """The rows of ``job_id`` by scheduled time; fails if a time has two."""
    found = runs(url, job_id)
    counted = Counter(_utc(row.scheduled_for) for row in found)
    assert set(counted.values()) <= {1}, counted
    return {_utc(row.scheduled_for): row for row in found}


@pytest.mark.postgres
def test_a_patch_committed_between_planning_and_claim_leaves_the_time_accounted(
    hypercorn_server: Callable[..., Server], pg_url: str, tmp_path: Path
) -> None:
    """Before: the claim, made with the version planned, was refused as stale, and the
    reload kept the cache's later next time: the time was dropped with no record.

    The window is widened for real, with no hook: a transaction holds the job's row
    across its due time, so the claim (planned with the old version) skips it and
    retries, and the PATCH (of only ``timeout``) queues for the row; released, the
    PATCH commits first."""
    server = hypercorn_server(ASYNCAPP_DATABASE_URL=pg_url)
    path = tmp_path / "marks"
    due = whole_second(3.0)
    add(server, {"id": "solo", "func": "tests.jobs:mark", "args": [str(path)],
                 "trigger": "interval", "hours": 1, "start_date": due.isoformat()})  # fmt: skip
    holder = psycopg.connect(pg_url.replace("+psycopg", ""))
    try:
        holder.execute("SELECT id FROM asyncapp_jobs WHERE id = 'solo' FOR UPDATE")
        blocker = holder.info.backend_pid
        wait_until(lambda: datetime.now(UTC) > due + timedelta(seconds=0.8), what="the due time")
        answer: list[httpx.Response] = []
        patch = threading.Thread(target=lambda: answer.append(httpx.patch(
            f"{server.url}/scheduler/jobs/solo", json={"timeout": 30}, headers=AUTH, timeout=30,
        )))  # fmt: skip
        patch.start()
        wait_until(
            lambda: rows(pg_url, "SELECT pid FROM pg_stat_activity "
                         "WHERE :b = ANY(pg_blocking_pids(pid))", b=blocker),
            what="the PATCH waiting for the row",
        )  # fmt: skip
        holder.commit()
        patch.join(30)
    finally:
        holder.close()
    assert answer[0].status_code == 200, answer[0].text
    assert answer[0].json()["timeout"] == 30

    wait_until(lambda: due in ledger(pg_url, "solo"), what="the due time accounted for")
    row = ledger(pg_url, "solo")[due]
    assert row.status != "missed", row
    wait_until(lambda: marks(path), what="the body to run")
    assert [m[0] for m in marks(path)] == [due.isoformat()]
    assert server.stop() == 0


def release_env(tmp_path: Path, release: str, at: datetime, **extra: str) -> dict[str, str]:
    return {
        "ASYNCAPP_DATABASE_URL": f"sqlite:///{tmp_path / 'release.db'}",
        "ASYNCAPP_JOB_MODULES": "tests.jobs_release",
        "TESTS_RELEASE": release,
        "TESTS_RELEASE_PATH": str(tmp_path / "marks"),
        "TESTS_RELEASE_AT": at.isoformat(),
        **FAST,
        **extra,
    }


def test_a_deploy_across_a_declared_jobs_due_time_runs_it_within_grace(
    hypercorn_server: Callable[..., Server], tmp_path: Path
) -> None:
    """Before: the new declaration was written with its next time computed from now,
    tomorrow's: today's time, within its grace, was lost with no record."""
    at = whole_second(15.0)
    old = hypercorn_server(**release_env(tmp_path, "old", at))
    assert datetime.now(UTC) < at, "the old release started after the due time"
    assert old.stop() == 0
    url = f"sqlite:///{tmp_path / 'release.db'}"
    wait_until(lambda: datetime.now(UTC) > at + timedelta(seconds=1), what="the due time")
    new = hypercorn_server(**release_env(tmp_path, "new", at))

    wait_until(lambda: marks(tmp_path / "marks"), what="today's run")
    assert [(m[0], m[3]) for m in marks(tmp_path / "marks")] == [(at.isoformat(), "new")]
    assert new.stop() == 0
    assert ledger(url, "daily")[at].status == "success"
    assert len(marks(tmp_path / "marks")) == 1


@pytest.fixture
def offline(tmp_path: Path, make_app: Callable[..., Flask]) -> Callable[..., str]:
    """``offline("pause", "tick")``: a ``flask jobs`` command on the servers' database,
    with no server running."""
    runner = make_app(database_url=f"sqlite:///{tmp_path / 'server.db'}").test_cli_runner()

    def invoke(*args: str) -> str:
        result: Result = runner.invoke(args=["jobs", *args])
        assert result.exit_code == 0, result.output
        return result.output

    return invoke


def test_a_pause_or_a_new_trigger_while_every_server_is_down_records_the_skipped_times(
    hypercorn_server: Callable[..., Server], tmp_path: Path, offline: Callable[..., str]
) -> None:
    """Before: the change moved the next time past the times no server was up to claim,
    and they had no record."""
    url = f"sqlite:///{tmp_path / 'server.db'}"
    server = hypercorn_server(**FAST)
    start = whole_second(1.0)
    for job_id in ("paused", "moved"):
        add(server, tick_job(job_id, tmp_path / job_id, start, None))
    wait_until(lambda: all(len(marks(tmp_path / j)) >= 2 for j in ("paused", "moved")),
               what="both jobs firing")  # fmt: skip
    assert server.stop() == 0
    time.sleep(3)  # every server is down across three scheduled times of each job
    offline("pause", "paused")
    offline("modify", "moved", "--trigger", "interval", "--set", "hours=1")
    changed_at = datetime.now(UTC)

    for job_id in ("paused", "moved"):
        found = ledger(url, job_id)
        times = sorted(found)
        # Every second from the start up to the change has its one record.
        expected = [start + timedelta(seconds=i) for i in range(len(times))]
        assert times == expected, (job_id, [str(t) for t in times])
        assert times[-1] > changed_at - timedelta(seconds=1.5), (job_id, times[-1])
        skipped = [row for row in found.values() if row.status == "missed"]
        assert len(skipped) >= 3, (job_id, skipped)
        assert {row.reason for row in skipped} == {"no_scheduler"}
        ran = {m[0] for m in marks(tmp_path / job_id)}
        assert ran == {t.isoformat() for t, row in found.items() if row.status != "missed"}


def test_the_backlog_after_a_stall_is_coalesced_not_run_nor_overlapping(
    hypercorn_server: Callable[..., Server], tmp_path: Path
) -> None:
    """Before: the times planned one by one while the claim waited were claimed one by
    one: the oldest ran, the next ran, and the rest were recorded ``overlap``."""
    database = tmp_path / "server.db"
    url = f"sqlite:///{database}"
    path = tmp_path / "marks"
    server = hypercorn_server()
    start = whole_second(1.0)
    add(server, tick_job("tick", path, start, None, misfire_grace_time=30))
    wait_until(lambda: len(marks(path)) >= 2, what="the job firing")
    holder = sqlite3.connect(database, isolation_level=None)
    try:
        # A backup holding SQLite's write lock for 3.5 s (the claims wait up to 5 s).
        holder.execute("BEGIN IMMEDIATE")
        stalled = datetime.now(UTC)
        time.sleep(3.5)
        holder.execute("COMMIT")
    finally:
        holder.close()
    wait_until(lambda: len([m for m in marks(path) if datetime.fromisoformat(m[0]) > stalled])
               >= 3, what="firing after the stall")  # fmt: skip
    assert server.stop() == 0

    found = ledger(url, "tick")
    times = sorted(found)
    assert times == [start + timedelta(seconds=i) for i in range(len(times))]
    missed = [row for row in found.values() if row.status == "missed"]
    assert missed, "the stall left no backlog"
    assert {row.reason for row in missed} == {"coalesced"}, [(r.scheduled_for, r.reason)
                                                             for r in missed]  # fmt: skip
    ran = Counter(m[0] for m in marks(path))
    assert set(ran.values()) == {1}
    assert set(ran) == {t.isoformat() for t, row in found.items() if row.status != "missed"}
