"""Upstream HTTP/1.1 server the stacks call, so job timing is measured outside them.

Raw asyncio streams, keep-alive, GET only. Endpoints (times are Unix epoch seconds):

- ``GET /delay?ms=N[&tag=T&job=J]``: answers ``200 ok`` after N milliseconds. With a
  tag, records the job number J, the arrival time (request head parsed) and the
  completion time (just before the response is written).
- ``GET /wait?tag=T&count=C&timeout=S[&quiet=Q]``: answers once C completions of
  tag T are recorded, S seconds passed, or (with Q) Q seconds passed without a
  completion since the last one, with ``{"done": d}``.
- ``GET /dump?tag=T``: ``{"job": [...], "arrival": [...], "completion": [...]}``
  for tag T, then forgets the tag.

Run: ``python -m bench.upstream --port P [--max-seconds S]``; it exits after S
seconds at the latest.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

MAX_REQUESTS_PER_CONNECTION = 1_000_000
IDLE_TIMEOUT_S = 60.0
MAX_HEADER_LINES = 100


@dataclass
class TagRecord:
    """What the upstream saw for one tag: parallel lists, one entry per request."""

    job: list[int] = field(default_factory=list)
    arrival: list[float] = field(default_factory=list)
    completion: list[float] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)


class Upstream:
    """Request handling and per-tag records."""

    def __init__(self) -> None:
        self.tags: dict[str, TagRecord] = {}

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one keep-alive connection, bounded in requests and idle time."""
        try:
            for _ in range(MAX_REQUESTS_PER_CONNECTION):
                async with asyncio.timeout(IDLE_TIMEOUT_S):
                    request_line = await reader.readline()
                    if not request_line:
                        return
                    close = await self._skip_headers(reader)
                arrival = time.time()
                target = request_line.split(b" ")[1].decode("latin-1")
                status, body = await self._route(target, arrival)
                head = (
                    f"HTTP/1.1 {status}\r\nContent-Type: text/plain\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n"
                )
                writer.write(head.encode("latin-1") + body)
                await writer.drain()
                if close:
                    return
        except (TimeoutError, ConnectionError, IndexError):
            return
        finally:
            writer.close()

    @staticmethod
    async def _skip_headers(reader: asyncio.StreamReader) -> bool:
        """Read the header block; True if the client asked to close the connection."""
        close = False
        for _ in range(MAX_HEADER_LINES):
            line = await reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            if line.lower().startswith(b"connection:") and b"close" in line.lower():
                close = True
        return close

    async def _route(self, target: str, arrival: float) -> tuple[str, bytes]:
        url = urlsplit(target)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        if url.path == "/delay":
            await asyncio.sleep(float(query.get("ms", "0")) / 1000.0)
            tag = query.get("tag")
            if tag:
                record = self.tags.setdefault(tag, TagRecord())
                record.job.append(int(query.get("job", "-1")))
                record.arrival.append(arrival)
                record.completion.append(time.time())
                record.changed.set()
            return "200 OK", b"ok"
        if url.path == "/wait":
            within = float(query["timeout"])
            quiet = float(query.get("quiet", within))
            done = await self._wait(query["tag"], int(query["count"]), within, quiet)
            return "200 OK", json.dumps({"done": done}).encode()
        if url.path == "/dump":
            record = self.tags.pop(query["tag"], TagRecord())
            data = {"job": record.job, "arrival": record.arrival, "completion": record.completion}
            return "200 OK", json.dumps(data).encode()
        return "404 Not Found", b"not found"

    async def _wait(self, tag: str, count: int, within: float, quiet: float) -> int:
        """Completions of ``tag`` once ``count`` is reached, ``within`` seconds passed, or
        ``quiet`` seconds passed without a completion after the first one."""
        record = self.tags.setdefault(tag, TagRecord())
        deadline = time.monotonic() + within
        while len(record.completion) < count and (left := deadline - time.monotonic()) > 0:
            record.changed.clear()
            try:
                await asyncio.wait_for(record.changed.wait(), min(left, quiet))
            except TimeoutError:
                if record.completion:
                    break
        return len(record.completion)


async def serve(port: int, max_seconds: float) -> None:
    """Listen on 127.0.0.1:``port`` for at most ``max_seconds``."""
    upstream = Upstream()
    server = await asyncio.start_server(upstream.handle, "127.0.0.1", port, backlog=4096)
    async with server:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.serve_forever(), max_seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--max-seconds", type=float, default=3600.0)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.port, args.max_seconds))


if __name__ == "__main__":
    main()
