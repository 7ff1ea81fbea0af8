"""Overlap policies against real Hypercorn servers: a 1.2 s job due every 0.5 s.

``tests.jobs:span`` appends a start line and an end line (when it returns or is
cancelled) per run to a file shared by the processes, so what ran when is read
outside the servers.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import AUTH, Server, wait_until
from tests.test_cluster import FAST, live, runs

pytestmark = pytest.mark.timeout(120)

PERIOD, LENGTH = 0.5, 1.2


def spans(path: Path) -> dict[str, dict[str, Any]]:
    """Per run id: start and end (epoch seconds; end None if it never ended) and pid."""
    found: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return found
    for line in path.read_text().splitlines():
        phase, at, pid, run_id, _ = line.split(" ")
        entry = found.setdefault(run_id, {"start": None, "end": None, "pid": int(pid)})
        entry[phase] = float(at)
    return found


def most_at_once(found: dict[str, dict[str, Any]]) -> int:
    events = []
    for entry in found.values():
        events.append((entry["start"], 1))
        events.append((entry["end"] if entry["end"] is not None else float("inf"), -1))
    peak = current = 0
    for _, step in sorted(events):
        current += step
        peak = max(peak, current)
    return peak


def schedule(server: Server, path: Path, **options: Any) -> None:
    start = datetime.now(UTC) + timedelta(seconds=1)
    body = {
        "id": "slow",
        "func": "tests.jobs:span",
        "args": [str(path), LENGTH],
        "trigger": "interval",
        "seconds": PERIOD,
        "start_date": start.isoformat(),
        "end_date": (start + timedelta(seconds=4)).isoformat(),
        **options,
    }
    response = httpx.post(f"{server.url}/scheduler/jobs", json=body, headers=AUTH, timeout=10)
    assert response.status_code == 200, response.text


def settle(url: str) -> list[Any]:
    """The job's ledger once no run is in progress or waiting (9 scheduled times)."""

    def done() -> list[Any] | None:
        found = runs(url, "slow")
        if len(found) == 9 and all(r.status not in ("running", "waiting") for r in found):
            return found
        return None

    return wait_until(done, timeout=30, what="every run of the job to end")  # type: ignore[no-any-return]


@pytest.fixture
def server(hypercorn_server: Callable[..., Server], tmp_path: Path) -> tuple[str, Server]:
    url = f"sqlite:///{tmp_path / 'overlap.db'}"
    return url, hypercorn_server(ASYNCAPP_DATABASE_URL=url)


def test_skip_records_the_times_due_while_a_run_is_in_progress(
    server: tuple[str, Server], tmp_path: Path
) -> None:
    url, srv = server
    path = tmp_path / "spans"
    schedule(srv, path)
    ledger = settle(url)
    found = spans(path)
    assert most_at_once(found) == 1
    assert {r.status for r in ledger} == {"success", "missed"}
    assert {r.reason for r in ledger if r.status == "missed"} == {"overlap"}
    assert len(found) == len([r for r in ledger if r.status == "success"]) >= 3


def test_buffer_one_starts_the_waiting_run_as_the_running_one_ends(
    server: tuple[str, Server], tmp_path: Path
) -> None:
    url, srv = server
    path = tmp_path / "spans"
    schedule(srv, path, overlap="buffer_one")
    ledger = settle(url)
    found = sorted(spans(path).values(), key=lambda e: e["start"])
    assert most_at_once(spans(path)) == 1
    for before, after in itertools.pairwise(found):
        gap = after["start"] - before["end"]
        assert 0 <= gap < 0.3, (before, after)  # it waited, then started at once
    successes = [r for r in ledger if r.status == "success"]
    assert len(successes) == len(found) >= 4
    assert {r.reason for r in ledger if r.status == "missed"} == {"overlap"}  # one waits at most


def test_allow_runs_alongside_up_to_max_instances(
    server: tuple[str, Server], tmp_path: Path
) -> None:
    url, srv = server
    path = tmp_path / "spans"
    schedule(srv, path, overlap="allow", max_instances=2)
    ledger = settle(url)
    assert most_at_once(spans(path)) == 2
    assert {r.reason for r in ledger if r.status == "missed"} == {"overlap"}


def test_cancel_other_cancels_the_running_run_then_starts(
    server: tuple[str, Server], tmp_path: Path
) -> None:
    url, srv = server
    path = tmp_path / "spans"
    schedule(srv, path, overlap="cancel_other")
    ledger = settle(url)
    found = spans(path)
    assert most_at_once(found) == 1
    cancelled = [r for r in ledger if r.status == "interrupted"]
    assert len(cancelled) == 8 and all("cancel_other" in r.error_message for r in cancelled)
    assert [r.status for r in ledger][-1] == "success"
    assert len(found) == 9


def test_skip_holds_across_two_processes(
    hypercorn_server: Callable[..., Server], tmp_path: Path
) -> None:
    """A run in progress in one process refuses a run now asked of either, and the times
    due meanwhile are missed, whichever process claims them."""
    url = f"sqlite:///{tmp_path / 'two.db'}"
    servers = [hypercorn_server(ASYNCAPP_DATABASE_URL=url, **FAST) for _ in range(2)]
    wait_until(lambda: len(live(servers[0])) == 2, what="two servers")
    path = tmp_path / "spans"
    schedule(servers[0], path)

    def in_progress() -> dict[str, Any] | None:
        return next((e for e in spans(path).values() if e["end"] is None), None)

    running = wait_until(in_progress, what="a run in progress")
    # Asked within a few ms of its start, well inside its 1.2 s.
    answers = [
        httpx.post(f"{s.url}/scheduler/jobs/slow/run", headers=AUTH, timeout=10) for s in servers
    ]
    assert [a.status_code for a in answers] == [409, 409], [a.text for a in answers]
    owner = next(s for s in servers if s.process.pid == running["pid"])
    other = next(s for s in servers if s is not owner)
    assert "1 run(s) in progress" in answers[servers.index(other)].json()["error_message"]
    ledger = settle(url)
    assert most_at_once(spans(path)) == 1
    assert {r.reason for r in ledger if r.status == "missed"} == {"overlap"}
