"""Async views through asyncapp's adapter against a thread per request and bare ASGI.

    .venv/bin/python -m bench.adapter                 # 3 runs at 100 and 1000 clients
    .venv/bin/python -m bench.adapter --runs 1 --duration 3 --clients 100

Each server is a fresh one-process Hypercorn (no access log) pinned to CPU 0,
serving ``GET /wait``, which awaits ``asyncio.sleep(0.1)``; wrk, one thread,
loads it from CPU 1.  Prints the median req/s, p99 latency and server CPU time
per request (the steadiest figure on a busy machine) per stack:

* ``greenlet``: asyncapp as is (``create_app`` + ``to_asgi``).
* ``threads``: the same app, from a Flask subclass that overrides
  ``async_to_sync`` with Flask's own, so the adapter serves every request from
  its thread pool and each async view holds a thread while it awaits.
* ``bare``: an ASGI callable doing the same sleep, what Hypercorn can reach.
* ``client``, ``session``, ``bare-aiohttp`` (not run unless named in
  ``--stacks``): instead of the sleep, a GET of ``bench.upstream``'s
  ``/delay?ms=100`` (started on CPU 1): ``client`` through ``http_client()``,
  ``session`` through ``asyncapp.aiohttp_session()``, ``bare-aiohttp`` a bare
  ASGI app with its own ``aiohttp.ClientSession``.  CPU per request minus the
  sleeping stack's is the call's CPU inside a view with that many in flight.
* ``baseline`` (with ``--baseline DIR``): the ``greenlet`` app, but with the
  ``asyncapp`` package of another checkout, e.g. an older adapter from
  ``git worktree add DIR <commit>``.

Needs ``taskset`` and ``wrk``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
STACKS = ("greenlet", "threads", "bare")
DELAY = 0.1


def _asyncapp(flask_class: Any, call: str = "sleep") -> Any:
    """asyncapp's ASGI app with ``/wait``; built only in the server process.

    ``call``: what the view awaits: ``sleep``, ``client`` (``http_client().get``)
    or ``session`` (``aiohttp_session().get``) of the upstream.
    """
    from asyncapp import AsyncApp, aiohttp_session, http_client
    from asyncapp.asgi import to_asgi

    app = flask_class("asyncapp", static_folder=None)
    AsyncApp(app)
    url = f"{os.environ.get('BENCH_UPSTREAM', '')}/delay?ms={DELAY * 1000:.0f}"

    @app.get("/wait")
    async def wait() -> str:
        if call == "client":
            (await http_client().get(url)).raise_for_status()
        elif call == "session":
            async with aiohttp_session().get(url) as response:
                await response.read()
        else:
            await asyncio.sleep(DELAY)
        return "ok"

    return to_asgi(app)


class BareAiohttp:
    """The ceiling with the call: a bare ASGI app GETting the upstream with aiohttp."""

    def __init__(self) -> None:
        self.session: Any = None
        self.url = f"{os.environ.get('BENCH_UPSTREAM', '')}/delay?ms={DELAY * 1000:.0f}"

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        import aiohttp

        if scope["type"] == "lifespan":
            await bare(scope, receive, send)
            return
        if self.session is None:
            self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        async with self.session.get(self.url) as response:
            await response.read()
        await _answer(send)


def _threaded_flask() -> Any:
    from flask import Flask

    class ThreadedFlask(Flask):
        """Overrides async_to_sync (with Flask's own), so the adapter keeps off the loop."""

        def async_to_sync(
            self, func: Callable[..., Coroutine[Any, Any, Any]]
        ) -> Callable[..., Any]:
            return super().async_to_sync(func)

    return ThreadedFlask


async def bare(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The ceiling: no Flask, no adapter."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    await asyncio.sleep(DELAY)
    await _answer(send)


async def _answer(send: Any) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain"), (b"content-length", b"2")],
        }
    )
    await send({"type": "http.response.body", "body": b"ok"})


def build(stack: str) -> Any:
    """The ASGI app of ``stack``; Hypercorn evaluates ``bench.adapter:build("...")``."""
    from flask import Flask

    return {
        "greenlet": lambda: _asyncapp(Flask),
        "threads": lambda: _asyncapp(_threaded_flask()),
        "client": lambda: _asyncapp(Flask, "client"),
        "session": lambda: _asyncapp(Flask, "session"),
        "bare-aiohttp": BareAiohttp,
    }.get(stack, lambda: bare)()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start(
    stack: str, port: int, tmp: str, baseline: str, upstream: str
) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCAPP_")}
    env["BENCH_UPSTREAM"] = upstream
    path = [baseline, str(REPO)] if stack == "baseline" else [str(REPO)]
    env.update(
        PYTHONPATH=os.pathsep.join(path),
        ASYNCAPP_DATABASE_URL=f"sqlite:///{tmp}/{stack}.db",
        ASYNCAPP_LOG_LEVEL="WARNING",
    )
    app = "greenlet" if stack == "baseline" else stack
    command = ["taskset", "-c", "0", sys.executable, "-m", "hypercorn", "-w", "0"]
    command += ["--bind", f"127.0.0.1:{port}", "--backlog", "2048", f"bench.adapter:build({app!r})"]
    process = subprocess.Popen(
        command,
        cwd=tmp,  # not the repository: ``python -m`` puts the cwd before PYTHONPATH
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/wait", timeout=2):
                return process
        except OSError:
            if process.poll() is not None:
                raise SystemExit(f"{stack}: server exited with {process.returncode}") from None
            time.sleep(0.2)
    _stop(process)
    raise SystemExit(f"{stack}: server did not answer within 30 s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wrk(port: int, clients: int, seconds: float) -> tuple[float, float]:
    """(req/s, p99 in ms) of one wrk run; non-2xx answers fail the run."""
    command = ["taskset", "-c", "1", "wrk", "-t1", f"-c{clients}", f"-d{seconds:g}s"]
    command += ["--latency", "--timeout", "10s", f"http://127.0.0.1:{port}/wait"]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    if "Non-2xx" in out:
        raise SystemExit(f"non-2xx responses:\n{out}")
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    value, unit = re.search(r"\s99%\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
    return rate, float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def _line(stack: str, clients: int, figures: tuple[float, float, float]) -> str:
    rate, p99, cpu = figures
    figures_text = f"{rate:5.0f} req/s  p99 {p99:5.0f} ms  {cpu:4.0f} us CPU/req"
    return f"{stack:8} {clients:5} clients: {figures_text}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--clients", default="100,1000")
    parser.add_argument("--stacks", default=",".join(STACKS))
    parser.add_argument("--baseline", metavar="DIR", help="a checkout to measure as 'baseline'")
    args = parser.parse_args()
    for tool in ("taskset", "wrk"):
        if shutil.which(tool) is None:
            raise SystemExit(f"needs {tool}: apt-get install -y wrk util-linux")
    clients = [int(n) for n in args.clients.split(",")]
    stacks = args.stacks.split(",") + (["baseline"] if args.baseline else [])
    results: dict[tuple[str, int], list[tuple[float, float, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack_of_processes:
        upstream = ""
        if {"client", "session", "bare-aiohttp"} & set(stacks):
            upstream_port = _free_port()
            command = ["taskset", "-c", "1", sys.executable, "-m", "bench.upstream"]
            command += ["--port", str(upstream_port)]
            process = subprocess.Popen(command, cwd=REPO, start_new_session=True)
            stack_of_processes.callback(_stop, process)
            upstream = f"http://127.0.0.1:{upstream_port}"
        for run in range(args.runs):
            for stack in stacks:  # interleaved, so that drift in machine load hits all alike
                port = _free_port()
                server = _start(stack, port, tmp, args.baseline, upstream)
                try:
                    for n in clients:
                        _wrk(port, n, 2)  # warm-up: connections, caches, thread pool
                        cpu = _cpu_seconds(server.pid)
                        rate, p99 = _wrk(port, n, args.duration)
                        done = rate * args.duration
                        cpu = (_cpu_seconds(server.pid) - cpu) / done * 1e6 if done else math.nan
                        results.setdefault((stack, n), []).append((rate, p99, cpu))
                        print(f"run {run + 1} {_line(stack, n, (rate, p99, cpu))}", flush=True)
                finally:
                    _stop(server)
    print(f"\nmedians of {args.runs} runs of {args.duration:g} s")
    for (stack, n), values in results.items():
        rate, p99, cpu = (statistics.median(column) for column in zip(*values, strict=True))
        print(_line(stack, n, (rate, p99, cpu)))


if __name__ == "__main__":
    main()
