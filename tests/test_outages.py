"""A PostgreSQL outage with runs in flight on two servers (issue 16 item 12).

The throwaway cluster (``pg_cluster``) is stopped for 8 s (below the 10 s process
timeout) and for 15 s (past it) while a 30 s run is in flight and a short run ends
during the outage, with the default heartbeat and process timeout.  The job bodies
write a start and an end line each (``tests.jobs:span``): the ground truth that
the long run ran once, to its end, and that no second body of the
``max_instances: 1`` job ran beside it.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.conftest import Cluster, Server, wait_until
from tests.test_cluster import add, live, rows, whole_second
from tests.test_partial_failure import most_at_once, spans

#: Lines that say a live server was taken for dead, or fenced.
DEATH = ("stopped heartbeating", "presumed dead", "abandoning")


@pytest.mark.postgres
@pytest.mark.timeout(240)
@pytest.mark.parametrize("outage", [8, 15])
def test_a_postgres_outage_declares_no_live_server_dead(
    hypercorn_server: Callable[..., Server], pg_cluster: Cluster, tmp_path: Path, outage: int
) -> None:
    """Before (issue 16): a server alive throughout was declared dead in 4 of 5 trials,
    its 30 s run cancelled and recorded ``interrupted``, and runs that ended during the
    outage with their results still queued were recorded ``interrupted`` too."""
    url = pg_cluster.url
    servers = [hypercorn_server(ASYNCAPP_DATABASE_URL=url) for _ in range(2)]
    wait_until(lambda: len(live(servers[0])) == 2, what="two servers")
    long_path, short_path = tmp_path / "long", tmp_path / "short"
    due = whole_second(3.0)
    # A 30 s body every 5 s, one at a time: the next times are missed as overlap
    # while it runs, and a second body beside it would show in its lines.
    add(servers[0], {"id": "long", "func": "tests.jobs:span", "args": [str(long_path), 30],
                     "trigger": "interval", "seconds": 5, "start_date": due.isoformat(),
                     "max_instances": 1})  # fmt: skip
    # Starts 1 s before the outage and ends 2 s into it: its result waits in the queue.
    short_due = due + timedelta(seconds=4)
    add(servers[1], {"id": "short", "func": "tests.jobs:span", "args": [str(short_path), 3],
                     "trigger": "date", "run_date": short_due.isoformat()})  # fmt: skip
    wait_until(lambda: spans(long_path) and spans(short_path), what="both bodies started")

    pg_cluster.stop()
    down_at = datetime.now(UTC)
    wait_until(lambda: datetime.now(UTC) > down_at + timedelta(seconds=outage), timeout=60,
               what=f"{outage} s of outage")  # fmt: skip
    pg_cluster.start()

    first = spans(long_path)[0]
    wait_until(lambda: spans(long_path)[0][1] < float("inf"), timeout=60,
               what="the long run to end")  # fmt: skip
    start, end, _ = spans(long_path)[0]
    assert end - start >= 29.5, "the long run was cancelled"
    assert first[0] == start
    # Its end is recorded, and so is the short run's, each with its real status.
    long_id = _run_ids(long_path)[0]
    short_id = _run_ids(short_path)[0]
    wait_until(
        lambda: _status(url, long_id) == "success" and _status(url, short_id) == "success",
        timeout=60,
        what="both runs recorded as success",
    )
    assert most_at_once(spans(long_path)) == 1, spans(long_path)
    assert len(spans(short_path)) == 1
    assert not rows(url, "SELECT id FROM asyncapp_runs WHERE status = 'interrupted'")
    for server in servers:
        said = server.output()
        assert not [line for line in said.splitlines() if any(d in line for d in DEATH)], said
    assert [s.stop() for s in servers] == [0, 0]


def _run_ids(path: Path) -> list[str]:
    return [line.split(" ")[3] for line in path.read_text().splitlines() if line.startswith("end")]


def _status(url: str, run_id: str) -> str | None:
    found = rows(url, "SELECT status FROM asyncapp_runs WHERE id = :r", r=run_id)
    return found[0].status if found else None
