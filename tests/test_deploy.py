"""Deploys (issue 16 items 6 and 9/10): stopping ``hypercorn -w 2`` on PostgreSQL
cleanly, and old and new code running side by side on one database.
"""

from __future__ import annotations

import os
import signal
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from tests.conftest import AUTH, Server, wait_until
from tests.test_cluster import FAST, add, live, marks, rows, whole_second
from tests.test_partial_failure import spans

pytestmark = pytest.mark.timeout(240)


@pytest.mark.postgres
def test_sigterm_to_two_workers_on_postgres_stops_both_cleanly(
    hypercorn_server: Callable[..., Server], pg_url: str, tmp_path: Path
) -> None:
    """Before (issue 16): one worker of two never logged ``stopped`` and kept its
    process row (twice in two tries); the next start called it dead.  Hypercorn's
    parent terminates the workers left once one has exited: the idle one exits
    first, and the one still draining a run was killed mid-drain."""
    outputs = []
    for attempt in range(5):
        server = hypercorn_server(workers=2, ASYNCAPP_DATABASE_URL=pg_url, **FAST)
        wait_until(lambda: len(live(server)) == 2, what="two workers")  # noqa: B023
        path = tmp_path / f"spans{attempt}"
        # A 3 s run in flight on one worker when SIGTERM comes: it ends within the grace.
        add(server, {"id": f"busy{attempt}", "func": "tests.jobs:span", "args": [str(path), 3],
                     "trigger": "date", "run_date": whole_second(0.5).isoformat()})  # fmt: skip
        wait_until(lambda: spans(path), what="the run to start")  # noqa: B023
        code = server.stop()
        assert server.ended.wait(30)
        said = server.output()
        outputs.append(said)
        assert code == 0, (attempt, said)
        assert said.count("asyncapp stopped on") == 2, (attempt, said)
        assert rows(pg_url, "SELECT id, pid FROM asyncapp_processes") == [], (attempt, said)
        (start, end, _), *more = spans(path)
        assert not more and end - start >= 2.9, (attempt, spans(path))
        ledger = rows(pg_url, "SELECT status FROM asyncapp_runs WHERE job_id = :j",
                      j=f"busy{attempt}")  # fmt: skip
        assert [r.status for r in ledger] == ["success"], (attempt, said)
    # No start found a process left behind to call dead.
    assert not [o for o in outputs if "stopped heartbeating" in o]


def test_sigterm_to_one_worker_stops_the_whole_server_gracefully_once(
    hypercorn_server: Callable[..., Server], tmp_path: Path
) -> None:
    """Before: the worker died at once (no handler of its own), and Hypercorn's parent
    then killed the others.  Setting the parent's event from the worker instead would
    have had the parent start new workers, which stopped at once, in a loop."""
    server = hypercorn_server(workers=2, **FAST)
    workers = wait_until(lambda: len(live(server)) == 2 and live(server), what="two workers")
    path = tmp_path / "spans"
    add(server, {"id": "busy", "func": "tests.jobs:span", "args": [str(path), 3],
                 "trigger": "date", "run_date": whole_second(0.5).isoformat()})  # fmt: skip
    wait_until(lambda: spans(path), what="the run to start")
    os.kill(workers[0]["pid"], signal.SIGTERM)
    code, said = server.exited(timeout=60)
    assert code == 0, said
    assert said.count("asyncapp started on") == said.count("asyncapp stopped on") == 2, said
    (start, end, _), *more = spans(path)
    assert not more and end - start >= 2.9
    url = f"sqlite:///{tmp_path / 'server.db'}"
    assert [r.status for r in rows(url, "SELECT status FROM asyncapp_runs")] == ["success"]
    assert rows(url, "SELECT id FROM asyncapp_processes") == []


def test_old_and_new_code_side_by_side_never_undo_each_other(
    hypercorn_server: Callable[..., Server], tmp_path: Path
) -> None:
    """Before (issue 16): every start wrote its code's declarations and deleted the
    declared jobs its code lacked, cluster-wide: old and new processes restarted
    alternately deleted and re-added each other's jobs at every start."""
    url = f"sqlite:///{tmp_path / 'release.db'}"
    path = tmp_path / "marks"

    def start(release: str) -> Server:
        env = {"ASYNCAPP_DATABASE_URL": url, "ASYNCAPP_JOB_MODULES": "tests.jobs_release",
               "TESTS_RELEASE": release, "TESTS_RELEASE_PATH": str(path),
               "TESTS_RELEASE_TICK": "1", **FAST}  # fmt: skip
        return hypercorn_server(**env)

    def changes() -> list[tuple[str, str]]:
        return [(r.job_id, r.action) for r in
                rows(url, "SELECT job_id, action FROM asyncapp_changes ORDER BY id")]  # fmt: skip

    old = start("old")
    before = changes()
    assert sorted(before) == [("daily", "add"), ("only_old", "add"), ("tick", "add")]
    new = start("new")
    # A rolling deploy, restarted alternately: each replacement starts before the
    # process it replaces stops, so old and new code always run side by side.
    for _ in range(3):
        replacement = start("old")
        assert old.stop() == 0
        old = replacement
        replacement = start("new")
        assert new.stop() == 0
        new = replacement
    assert changes() == before, "a process rewrote the declared jobs while mixed"
    mixed = marks(Path(f"{path}.tick"))
    assert mixed and {m[3] for m in mixed} == {"old"}, "the stored definition fired"
    assert "not written yet" in new.output()

    second = start("new")
    switched = datetime.now(UTC)
    assert old.stop() == 0
    # The last old process gone, the new ones write their declarations, once.
    wait_until(lambda: len(changes()) == len(before) + 4, what="the new declarations")
    added = changes()[len(before) :]
    assert sorted(added) == [("daily", "modify"), ("only_new", "add"), ("only_old", "remove"),
                             ("tick", "modify")]  # fmt: skip
    wait_until(lambda: [m for m in marks(Path(f"{path}.tick")) if m[3] == "new"],
               what="the new definition firing")  # fmt: skip
    ticks = marks(Path(f"{path}.tick"))
    first_new = min(datetime.fromisoformat(m[0]) for m in ticks if m[3] == "new")
    assert first_new > switched
    assert {m[3] for m in ticks if datetime.fromisoformat(m[0]) >= first_new} == {"new"}
    pids = {new.process.pid, second.process.pid}
    assert {m[1] for m in ticks if m[3] == "new"} <= pids
    started = Counter(m[0] for m in ticks)
    assert set(started.values()) == {1}, "a time ran twice"
    for server in (new, second):
        listed = httpx.get(f"{server.url}/scheduler/jobs", headers=AUTH, timeout=10).json()
        assert sorted((j["id"], j["broken"]) for j in listed) == [
            ("daily", False), ("only_new", False), ("tick", False)]  # fmt: skip
        assert server.stop() == 0
    assert len(changes()) == len(before) + 4
