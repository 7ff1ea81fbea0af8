"""The README's tour, run as printed: its Python blocks become files, its shell lines
run (``curl`` lines as HTTP requests) against the real servers they start."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import REPO, free_port, wait_until
from tests.docrun import Reader, blocks

pytestmark = pytest.mark.timeout(180)


def tour() -> str:
    text = (REPO / "README.md").read_text()
    return text[text.index("## A short tour") : text.index("### Configure the database")]


def first_server_command() -> str:
    """The server the README's first command leaves running (after its venv and install)."""
    readme = (REPO / "README.md").read_text()
    first = next(line for line in readme.splitlines() if line.startswith("    python3 -m venv"))
    return first.rsplit("&& ", 1)[1]


def test_the_tour_runs_as_printed(tmp_path: Path) -> None:
    reader = Reader(tmp_path, free_port())
    try:
        reader.run(first_server_command())
        reader.run(f"curl http://127.0.0.1:{reader.port}/healthz")
        for language, body in blocks(tour()):
            if language == "python":
                reader.python(body)
                continue
            reader.shell(body)
            if "self_check/runs" in body:
                check_self_check_ran(reader)
        assert reader.responses[-1].json() == {"upstream_status": 200}
        assert "self_check" in reader.outputs[-1] and "success" in reader.outputs[-1]
    finally:
        reader.close()


def check_self_check_ran(reader: Reader) -> None:
    """The job the reader wrote ran successfully, and says so in its history and log."""
    assert reader.server is not None
    headers = {"Authorization": f"Bearer {reader.env['ASYNCAPP_API_TOKEN']}"}
    url = f"{reader.server.url}/scheduler/jobs/self_check/runs"

    def succeeded() -> list[Any]:
        runs = httpx.get(url, headers=headers, timeout=10).json()["runs"]
        return [run for run in runs if run["status"] == "success"]

    (run, *_) = wait_until(succeeded, timeout=30, what="a successful run of self_check")
    assert run["job_id"] == "self_check"
    line = reader.server.wait_for(f"[job=self_check run={run['id']} ")
    assert "/healthz answered 200" in line
