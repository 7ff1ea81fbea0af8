"""The README's tour, run as printed: its Python blocks become files, its shell lines
run (``curl`` lines as HTTP requests) against the real servers they start.

Only two things are adapted: the port (a free one instead of 8000, in the
commands and in the files alike) and ``.venv/bin/X`` (this interpreter's ``-m X``).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import REPO, Server, free_port, start_server, wait_until

pytestmark = pytest.mark.timeout(180)

README = REPO / "README.md"
FENCE = re.compile(r"```(\w+)\n(.*?)```", re.S)


def tour_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of each fenced block of the tour, in order."""
    tour = text[text.index("## A short tour") : text.index("### Configure the database")]
    return [(match.group(1), match.group(2)) for match in FENCE.finditer(tour)]


@dataclass
class Tour:
    """Runs the tour's commands in ``workdir`` with ``env``; ``8000`` becomes ``port``."""

    workdir: Path
    port: int
    env: dict[str, str] = field(default_factory=dict)
    server: Server | None = None
    responses: list[httpx.Response] = field(default_factory=list)

    def adapt(self, text: str) -> str:
        return text.replace("127.0.0.1:8000", f"127.0.0.1:{self.port}")

    def write(self, body: str) -> None:
        name = body.splitlines()[0].removeprefix("# ").strip()
        assert name.endswith(".py"), f"a Python block must start with '# <file>.py': {name!r}"
        (self.workdir / name).write_text(self.adapt(body))

    def run(self, line: str) -> None:
        words = shlex.split(self.adapt(line))
        assignments = {}
        while words and re.fullmatch(r"[A-Z_]+=.*", words[0]):
            key, _, value = words.pop(0).partition("=")
            assignments[key] = value
        command = words[0]
        if command == "export":
            key, _, value = words[1].partition("=")
            self.env[key] = value
        elif command == "curl":
            self.curl(words[1:])
        elif command.startswith(".venv/bin/"):
            tool = command.removeprefix(".venv/bin/")
            if tool == "hypercorn":
                self.start(words[1:], assignments)
            else:
                self.tool(tool, words[1:], assignments)
        else:
            raise AssertionError(f"the tour runs a command this test does not know: {line}")

    def start(self, args: list[str], assignments: dict[str, str]) -> None:
        if self.server is not None:  # "Stop the first server"
            assert self.server.stop() == 0
        app = args[-1]
        env = {**self.env, **assignments, "PYTHONPATH": f"{self.workdir}{os.pathsep}{REPO}"}
        self.server = start_server(env, app=app, port=self.port, cwd=self.workdir)
        self.server.wait_for("Running on http://")

    def tool(self, tool: str, args: list[str], assignments: dict[str, str]) -> None:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("ASYNCAPP_")},
            **self.env,
            **assignments,
        }
        done = subprocess.run(
            [sys.executable, "-m", tool, *args],
            cwd=self.workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr

    def curl(self, args: list[str]) -> None:
        method, headers, data, url = "GET", {}, None, None
        words = iter(args)
        for word in words:
            if word == "-X":
                method = next(words)
            elif word == "-H":
                name, _, value = next(words).partition(":")
                headers[name.strip()] = _expand(value.strip(), self.env)
            elif word == "-d":
                data = next(words)
                method = "POST" if method == "GET" else method
            else:
                url = word
        assert url is not None
        response = httpx.request(method, url, headers=headers, content=data, timeout=15)
        assert response.status_code < 400, (method, url, response.status_code, response.text)
        self.responses.append(response)


def _expand(text: str, env: dict[str, str]) -> str:
    """``$NAME`` replaced from ``env``, as the shell would."""
    return re.sub(r"\$(\w+)", lambda m: env.get(m.group(1), m.group(0)), text)


def test_the_tour_runs_as_printed(tmp_path: Path) -> None:
    shutil.copy(REPO / "hypercorn.toml", tmp_path / "hypercorn.toml")
    tour = Tour(tmp_path, free_port())
    try:
        for language, body in tour_blocks(README.read_text()):
            if language == "python":
                if body.startswith("# "):
                    tour.write(body)
                continue
            for line in body.splitlines():
                if line.strip() and not line.lstrip().startswith("#"):
                    tour.run(line)
            if tour.server is not None and "self_check/runs" in body:
                check_self_check_ran(tour)
        assert tour.responses[-1].json() == {"upstream_status": 200}
    finally:
        if tour.server is not None:
            tour.server.stop()


def check_self_check_ran(tour: Tour) -> None:
    """The job the reader wrote ran successfully, and says so in its history."""
    assert tour.server is not None
    headers = {"Authorization": f"Bearer {tour.env['ASYNCAPP_API_TOKEN']}"}
    url = f"{tour.server.url}/scheduler/jobs/self_check/runs"

    def succeeded() -> list[Any]:
        runs = httpx.get(url, headers=headers, timeout=10).json()["runs"]
        return [run for run in runs if run["status"] == "success"]

    (run, *_) = wait_until(succeeded, timeout=30, what="a successful run of self_check")
    assert run["job_id"] == "self_check"
    assert "answered 200" in tour.server.wait_for("answered 200")
