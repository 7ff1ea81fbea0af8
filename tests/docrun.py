"""Run the shell lines and Python files of a Markdown document, as a reader would.

A document's fenced ``python`` blocks whose first line is ``# <file>.py``
become files; its ``sh`` blocks run line by line (a line ending in ``\\`` or
with an open quote continues on the next):

- ``export NAME=value`` and ``NAME=value`` set the environment;
- ``.venv/bin/hypercorn ...`` starts a real server; one still running on the port
  fails the run, as it would fail the reader's command (``Address already in use``);
- a comment line saying ``Ctrl-C`` stops the running server, as the reader would;
- ``.venv/bin/<tool> ...`` runs this interpreter's ``-m <tool>`` (``.venv/bin/python``:
  the interpreter itself) and must exit 0;
- ``curl ...`` becomes the same HTTP request, which must answer below 400.

Only the port is adapted (a free one instead of 8000, in commands and files).
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

import httpx

from tests.conftest import REPO, Server, start_server

#: What :func:`commands` gives for a comment telling the reader to stop the server.
STOP = "<stop the running server>"
FENCE = re.compile(r"```(\w+)\n(.*?)```", re.S)
ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=.*")


def blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of each fenced block of ``text``, in order."""
    return [(match.group(1), match.group(2)) for match in FENCE.finditer(text)]


def commands(body: str) -> list[str]:
    """The commands of a shell block: continuations joined, comments and blanks dropped."""
    found: list[str] = []
    pending = ""
    for line in body.splitlines():
        if not pending and line.lstrip().startswith("#") and "Ctrl-C" in line:
            found.append(STOP)
            continue
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending = f"{pending}\n{line}" if pending else line
        if pending.endswith("\\"):
            pending = pending[:-1]
            continue
        try:
            shlex.split(pending, comments=True)
        except ValueError:  # an open quote: the command goes on
            continue
        found.append(pending)
        pending = ""
    assert not pending, f"unfinished command: {pending}"
    return found


@dataclass
class Reader:
    """Runs a document's commands in ``workdir``."""

    workdir: Path
    port: int
    env: dict[str, str] = field(default_factory=dict)
    server: Server | None = None
    responses: list[httpx.Response] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        shutil.copy(REPO / "hypercorn.toml", self.workdir / "hypercorn.toml")

    def adapt(self, text: str) -> str:
        return text.replace("127.0.0.1:8000", f"127.0.0.1:{self.port}")

    def python(self, body: str) -> None:
        """Write a ``# <file>.py`` block to its file; other Python blocks are left alone."""
        first = body.splitlines()[0]
        if first.startswith("# ") and first.strip().endswith(".py"):
            (self.workdir / first[2:].strip()).write_text(self.adapt(body))

    def shell(self, body: str) -> None:
        for command in commands(body):
            self.run(command)

    def run(self, command: str) -> None:
        if command == STOP:
            assert self.server is not None, "told to stop a server, but none runs"
            assert self.server.stop() == 0
            self.server = None
            return
        words = shlex.split(self.adapt(command), comments=True)
        assignments: dict[str, str] = {}
        while words and ASSIGNMENT.fullmatch(words[0]):
            key, _, value = words.pop(0).partition("=")
            assignments[key] = self.expand(value)
        if not words:  # NAME=value alone sets a shell variable
            self.env.update(assignments)
            return
        program = words[0]
        if program == "export":
            key, _, value = words[1].partition("=")
            self.env[key] = self.expand(value)
        elif program == "curl":
            self.curl([self.expand(word) for word in words[1:]])
        elif program == ".venv/bin/hypercorn":
            self.start(words[-1], assignments)
        elif program.startswith(".venv/bin/"):
            self.tool(program.removeprefix(".venv/bin/"), words[1:], assignments)
        else:
            raise AssertionError(f"a command the reader cannot run: {command}")

    def expand(self, text: str) -> str:
        """``$NAME`` replaced from the environment, as the shell would."""
        return re.sub(r"\$(\w+)", lambda m: self.env.get(m.group(1), m.group(0)), text)

    def start(self, app: str, assignments: dict[str, str]) -> None:
        if self.server is not None and self.server.process.poll() is None:
            raise AssertionError(
                f"a server already runs on port 8000 ({self.server.url}) and the document "
                "does not say to stop it: this command would fail with Address already in use"
            )
        env = {**self.env, **assignments, "PYTHONPATH": f"{self.workdir}{os.pathsep}{REPO}"}
        self.server = start_server(env, app=app, port=self.port, cwd=self.workdir)
        self.server.wait_for("Running on http://")

    def tool(self, tool: str, args: list[str], assignments: dict[str, str]) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCAPP_")}
        env.update(self.env)
        env.update(assignments)
        module = [] if tool == "python" else ["-m", tool]
        done = subprocess.run(
            [sys.executable, *module, *args],
            cwd=self.workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, (tool, args, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr, done.stderr
        self.outputs.append(done.stdout)

    def curl(self, args: list[str]) -> None:
        method, headers, data, url = "GET", {}, None, None
        words = iter(args)
        for word in words:
            if word == "-X":
                method = next(words)
            elif word == "-H":
                name, _, value = next(words).partition(":")
                headers[name.strip()] = value.strip()
            elif word == "-d":
                data = next(words)
                method = "POST" if method == "GET" else method
            elif word.startswith("-"):
                raise AssertionError(f"a curl option the reader does not know: {word}")
            else:
                url = word
        assert url is not None, args
        response = httpx.request(method, url, headers=headers, content=data, timeout=15)
        assert response.status_code < 400, (method, url, response.status_code, response.text)
        self.responses.append(response)

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
