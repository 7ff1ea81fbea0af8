"""Deploys (issue 16 items 6 and 9/10): stopping ``hypercorn -w 2`` on PostgreSQL
cleanly, and old and new code running side by side on one database.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Server, wait_until
from tests.test_cluster import FAST, add, live, rows, whole_second
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
