"""Jobs outlive the process: a real Hypercorn (repo's hypercorn.toml) stopped with SIGTERM
and started again on the same SQLite file."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import AUTH, Server


def jobs_by_id(server: Server) -> dict[str, dict[str, Any]]:
    response = httpx.get(f"{server.url}/scheduler/jobs", headers=AUTH, timeout=10)
    assert response.status_code == 200, response.text
    return {job["id"]: job for job in response.json()}


def test_jobs_and_pauses_survive_a_sigterm_restart(
    hypercorn_server: Callable[..., Server], tmp_path: Path
) -> None:
    database = f"sqlite:///{tmp_path / 'persist.db'}"

    first = hypercorn_server(ASYNCAPP_DATABASE_URL=database)
    with httpx.Client(base_url=first.url, headers=AUTH, timeout=10) as client:
        keep = client.post(
            "/scheduler/jobs",
            json={
                "id": "keep",
                "func": "tests.jobs:record",
                "args": ["x"],
                "trigger": "interval",
                "minutes": 5,
            },
        )
        assert keep.status_code == 200, keep.text
        held = client.post(
            "/scheduler/jobs",
            json={
                "id": "held",
                "func": "tests.jobs:record",
                "args": ["y"],
                "trigger": "cron",
                "minute": "*/10",
            },
        )
        assert held.status_code == 200, held.text
        paused = client.post("/scheduler/jobs/held/pause")
        assert paused.status_code == 200, paused.text
        assert paused.json()["paused"] is True
    before = jobs_by_id(first)

    assert first.stop() == 0
    _, output = first.exited()
    assert "Traceback" not in output

    second = hypercorn_server(ASYNCAPP_DATABASE_URL=database)
    after = jobs_by_id(second)

    assert after["keep"]["next_run_time"] is not None
    assert after["keep"]["next_run_time"] == before["keep"]["next_run_time"]
    assert after["keep"]["minutes"] == 5
    assert after["keep"]["args"] == ["x"]
    assert after["keep"]["paused"] is False
    assert after["held"]["paused"] is True
    assert after["held"]["next_run_time"] is None
    assert after["held"]["minute"] == "*/10"
    assert after == before

    assert second.stop() == 0
