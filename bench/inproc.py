"""asyncapp's request path without a server: ``python -m bench.inproc``.

    .venv/bin/python -m bench.inproc                       # async and sync views
    .venv/bin/python -m bench.inproc --views async --in-flight 1000 --no-freeze
    .venv/bin/python -m bench.inproc --views async,client,session   # the client inside a view

Drives ``asyncapp.asgi.to_asgi(create_app())`` in this process, through its
lifespan, with ASGI messages built here (no sockets, no Hypercorn), so that
what it reports is asyncapp's own work per request: the ASGI wrapper, the
adapter, Flask. CPU time, not wall time, so it holds on a busy machine. Pin it
to one CPU (``taskset -c 0``) for steadier figures. Per view kind it prints
the median over ``--runs`` of:

- CPU per request, with ``--in-flight`` requests at a time (each async view
  awaits ``asyncio.sleep(0.01)`` three times, so they are all in flight;
  ``client`` and ``session`` views instead GET ``bench.upstream``, started on
  CPU 1, through ``http_client()`` and ``asyncapp.aiohttp_session()``: their
  CPU minus ``async``'s is what a call costs inside a view with that many in
  flight, against ``bench.client``'s figure for the call alone);
- the garbage collector's part of it (timed through ``gc.callbacks``);
- RSS growth per request in flight: ``--in-flight`` requests held at an
  await, against the process before them.

``--no-freeze`` undoes the ``gc.freeze()`` of lifespan startup, to see what
the collector costs without it. The access log is off (``ASYNCAPP_ACCESS_LOG``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import procs

AWAITS = 3


def _rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class _GcClock:
    """CPU seconds spent in collections, from ``gc.callbacks``."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._began = 0.0
        gc.callbacks.append(self._tick)

    def _tick(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._began = time.process_time()
        else:
            self.seconds += time.process_time() - self._began


def _scope(path: str) -> dict[str, Any]:
    return {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "headers": [(b"host", b"127.0.0.1:8000"), (b"accept", b"*/*")],
        "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000), "extensions": {},
    }  # fmt: skip


async def _measure(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    from flask import Flask

    from asyncapp import create_app, http_client
    from asyncapp.asgi import to_asgi

    flask_app: Flask = create_app()
    gate = asyncio.Event()

    @flask_app.get("/bench/async")
    async def async_view() -> str:
        for _ in range(AWAITS):
            await asyncio.sleep(0.01)
        return "ok"

    @flask_app.get("/bench/hold")
    async def hold() -> str:
        await gate.wait()
        return "ok"

    @flask_app.get("/bench/sync")
    def sync_view() -> str:
        return "ok"

    @flask_app.get("/bench/client")
    async def client_view() -> str:
        (await http_client().get(f"{args.upstream}/delay?ms=10")).raise_for_status()
        return "ok"

    @flask_app.get("/bench/session")
    async def session_view() -> str:
        from asyncapp import aiohttp_session  # not in asyncapp before 2026-12-03

        async with aiohttp_session().get(f"{args.upstream}/delay?ms=10") as response:
            await response.read()
        return "ok"

    app = to_asgi(flask_app)

    async def request(path: str) -> None:
        messages = [{"type": "http.request", "body": b"", "more_body": False}]

        async def receive() -> dict[str, Any]:
            return messages.pop()

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start" and message["status"] != 200:
                raise RuntimeError(f"{path}: status {message['status']}")

        await app(_scope(path), receive, send)

    lifespan_in: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    lifespan_out: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    lifespan = asyncio.create_task(app({"type": "lifespan"}, lifespan_in.get, lifespan_out.put))
    await lifespan_in.put({"type": "lifespan.startup"})
    started = await lifespan_out.get()
    if started["type"] != "lifespan.startup.complete":
        raise SystemExit(f"startup failed: {started}")
    if args.no_freeze:
        gc.unfreeze()
    if args.gc_threshold:
        gc.set_threshold(args.gc_threshold)
    clock = _GcClock()
    results: dict[str, dict[str, float]] = {}
    for view in args.views.split(","):
        path = f"/bench/{view}"
        await asyncio.gather(*(request(path) for _ in range(100)))  # warm
        cpu_us, gc_us = [], []
        for _ in range(args.runs):
            clock.seconds, began = 0.0, time.process_time()
            for _ in range(args.requests // args.in_flight):
                await asyncio.gather(*(request(path) for _ in range(args.in_flight)))
            done = args.requests // args.in_flight * args.in_flight
            cpu_us.append((time.process_time() - began) / done * 1e6)
            gc_us.append(clock.seconds / done * 1e6)
        results[view] = {"cpu_us": statistics.median(cpu_us), "gc_us": statistics.median(gc_us)}
    gc.collect()
    before = _rss_kb()
    held = [asyncio.create_task(request("/bench/hold")) for _ in range(args.in_flight)]
    for _ in range(10):
        await asyncio.sleep(0)
    results["held"] = {"rss_kb_per_request": (_rss_kb() - before) / args.in_flight}
    gate.set()
    await asyncio.gather(*held)
    await lifespan_in.put({"type": "lifespan.shutdown"})
    await lifespan
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--views", default="async,sync", help="async, sync or both")
    parser.add_argument("--in-flight", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=5000, help="per run")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--gc-threshold", type=int, default=0, help="gc.set_threshold(N) first")
    parser.add_argument("--upstream", default="", help=argparse.SUPPRESS)
    parser.add_argument("--no-freeze", action="store_true", help="undo startup's gc.freeze()")
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-inproc-"))
        if {"client", "session"} & set(args.views.split(",")):
            port = procs.free_port()
            command = [sys.executable, "-m", "bench.upstream", "--port", str(port)]
            upstream = stack.enter_context(
                procs.running("upstream", command, procs.LOAD_CPU, Path(tmp))
            )
            args.upstream = f"http://127.0.0.1:{port}"
            procs.wait_ready(upstream, f"{args.upstream}/delay?ms=0")
        os.environ.update(
            ASYNCAPP_DATABASE_URL=f"sqlite:///{tmp}/inproc.db",
            ASYNCAPP_JOB_MODULES="",
            ASYNCAPP_ACCESS_LOG="false",
            ASYNCAPP_LOG_LEVEL="WARNING",
            ASYNCAPP_HTTP_MAX_CONNECTIONS=str(args.in_flight),
        )
        logging.disable(logging.WARNING)
        results = asyncio.run(_measure(args))
    freeze = "without" if args.no_freeze else "with"
    print(f"{args.in_flight} in flight, medians of {args.runs} x {args.requests}, {freeze} freeze")
    for view, figures in results.items():
        print(f"{view:6} " + "  ".join(f"{k} {v:.1f}" for k, v in figures.items()))


if __name__ == "__main__":
    main()
