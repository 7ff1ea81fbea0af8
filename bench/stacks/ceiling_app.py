"""Ceiling stack: a bare ASGI callable under Hypercorn, no framework, no scheduler.

Routes use one ``aiohttp.ClientSession`` (no connection limit); jobs are plain
asyncio tasks that sleep until their due time and fire. It bounds what any
asyncio stack on this machine can reach.

Serve with ``hypercorn bench.stacks.ceiling_app:app``; needs ``BENCH_UPSTREAM``.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any
from urllib.parse import parse_qs

import aiohttp

from bench.stacks.lag import LagProbe

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

UPSTREAM = os.environ.get("BENCH_UPSTREAM", "http://127.0.0.1:1")


class Ceiling:
    """State shared by the routes: the session, the lag probe, the background tasks."""

    def __init__(self) -> None:
        self.session: aiohttp.ClientSession | None = None
        self.lag = LagProbe()
        self.tasks: set[asyncio.Task[None]] = set()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` as a task, keeping a reference until it ends."""
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def call(self, url: str) -> None:
        """GET ``url`` and read the body."""
        assert self.session is not None
        async with self.session.get(url) as response:
            await response.read()

    async def oneshot(self, urls: list[str], at: float) -> None:
        """Sleep until epoch ``at``, then GET all ``urls`` at once."""
        await asyncio.sleep(max(0.0, at - time.time()))
        await asyncio.gather(*(self.call(u) for u in urls), return_exceptions=True)

    async def periodic(self, url: str, first: float, runs: int) -> None:
        """GET ``url`` at epoch ``first``, ``first + 1``, ... ``runs`` times."""
        for k in range(runs):
            await asyncio.sleep(max(0.0, first + k - time.time()))
            self.spawn(self.call(url))

    async def route(self, method: str, path: str, q: dict[str, str]) -> tuple[int, bytes]:
        if path in ("/healthz", "/bench/sync"):
            return 200, b"ok"
        if path == "/bench/async":
            await self.call(f"{UPSTREAM}/delay?ms=100")
            return 200, b"ok"
        if path == "/bench/oneshot" and method == "POST":
            n, tag, ms = int(q["n"]), q["tag"], q["ms"]
            urls = [f"{UPSTREAM}/delay?ms={ms}&tag={tag}&job={j}" for j in range(n)]
            self.spawn(self.oneshot(urls, float(q["at"])))
            return 200, json.dumps({"scheduled": n}).encode()
        if path == "/bench/interval" and method == "POST":
            n, start, runs = int(q["n"]), float(q["start"]), int(q["runs"])
            for j in range(n):
                url = f"{UPSTREAM}/delay?ms={q['ms']}&tag={q['tag']}&job={j}"
                self.spawn(self.periodic(url, start + j / n, runs))
            return 200, json.dumps({"scheduled": n}).encode()
        if path == "/bench/lag":
            if method == "POST":
                self.lag.start(float(q["seconds"]))
            return 200, json.dumps(self.lag.summary()).encode()
        return 404, b"not found"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.lifespan(receive, send)
            return
        query = {k: v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}
        status, body = await self.route(scope["method"], scope["path"], query)
        headers = [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def lifespan(self, receive: Receive, send: Send) -> None:
        """Open the session at startup, close it at shutdown."""
        for _ in range(2):
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.session is not None:
                    await self.session.close()
                await send({"type": "lifespan.shutdown.complete"})
                return


app = Ceiling()
