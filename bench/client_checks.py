"""What each engine under the shared client raises and honours, against real sockets.

``python -m bench.client --check`` prints one row per check and one column per
engine of ``bench.engines``: ``ok``, or what happened instead. Every server is a
raw asyncio server on 127.0.0.1 in this process, so each byte it sends (or does
not send) is under the check's control; nothing is mocked.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field

import httpx

from asyncapp.http import close_client
from bench.engines import ENGINES, Factory

#: A route gets the request head (request line and headers) and the connection's writer.
Handler = Callable[[bytes, asyncio.StreamWriter], Awaitable[None]]
#: A check builds its clients with the factory it is given, and returns a verdict.
Check = Callable[[Factory], Awaitable[str]]
#: Long enough for any engine that honours a timeout; short enough to keep the run brief.
SHORT = 0.3
PATIENCE = 5.0


def _response(status: str, body: bytes = b"", headers: str = "") -> bytes:
    return f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n{headers}\r\n".encode() + body


@dataclass
class Site:
    """A raw HTTP/1.1 server: one handler per path, and what it has seen."""

    routes: dict[str, Handler]
    open_now: int = 0
    open_max: int = 0
    connections: set[asyncio.Task[None]] = field(default_factory=set)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve requests on one connection until the client or a handler closes it."""
        self.connections.add(asyncio.current_task())  # type: ignore[arg-type]
        self.open_now += 1
        self.open_max = max(self.open_max, self.open_now)
        try:
            while not writer.is_closing():
                head = await reader.readuntil(b"\r\n\r\n")
                self.arrived.set()
                request_line = head.split(b"\r\n", 1)[0].split(b" ")
                if len(request_line) != 3 or not request_line[0].isalpha():
                    return  # not a request: a body this server does not expect

                await self.routes[request_line[1].decode().split("?")[0]](head, writer)
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
            pass
        except asyncio.CancelledError:
            # Only ``serving`` cancels, to end the site; a cancelled connection task
            # would make asyncio log an error from the stream's done-callback.
            pass
        finally:
            self.open_now -= 1
            writer.close()


@contextlib.asynccontextmanager
async def serving(site: Site) -> AsyncIterator[str]:
    """Listen on 127.0.0.1 for ``site``; yields the base URL, ends every connection on exit."""
    server = await asyncio.start_server(site.serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        for task in site.connections:
            task.cancel()
        await asyncio.gather(*site.connections, return_exceptions=True)


@contextlib.asynccontextmanager
async def engine_client(
    factory: Factory, connections: int = 10, timeouts: httpx.Timeout | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the engine ``factory`` builds, closed on exit."""
    client = factory(connections, timeouts or httpx.Timeout(PATIENCE))
    try:
        yield client
    finally:
        await close_client(client)


def _outcome(exc: BaseException | None, wanted: type[BaseException], elapsed: float) -> str:
    """``ok`` if ``exc`` is exactly ``wanted`` and came in time (2 x ``SHORT`` + 0.5 s)."""
    if exc is None:
        return "no error"
    if type(exc) is not wanted:
        return type(exc).__name__
    return "ok" if elapsed < 2 * SHORT + 0.5 else f"ok but after {elapsed:.1f} s"


async def _raised(request: Awaitable[object]) -> tuple[BaseException | None, float]:
    began = time.perf_counter()
    try:
        await asyncio.wait_for(request, PATIENCE * 5)
    except Exception as exc:
        return exc, time.perf_counter() - began
    return None, time.perf_counter() - began


@contextlib.contextmanager
def refused_port() -> Iterator[int]:
    """A loopback port with nothing listening: connecting to it is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@contextlib.contextmanager
def unanswered_port() -> Iterator[int]:
    """A loopback port whose accept queue is full, so a new connect hangs.

    The listener never accepts; once its backlog of one is taken by our own
    sockets, the kernel drops further SYNs and the client's connect times out.
    """
    with contextlib.ExitStack() as stack:
        listener = stack.enter_context(socket.socket())
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        for _ in range(16):
            filler = stack.enter_context(socket.socket())
            filler.settimeout(0.2)
            try:
                filler.connect(("127.0.0.1", port))
            except TimeoutError:
                break
        yield port


async def refused(factory: Factory) -> str:
    with refused_port() as port:
        async with engine_client(factory) as client:
            exc, _ = await _raised(client.get(f"http://127.0.0.1:{port}/"))
    return "ok" if type(exc) is httpx.ConnectError else type(exc).__name__ if exc else "no error"


async def connect_timeout(factory: Factory) -> str:
    with unanswered_port() as port:
        timeout = httpx.Timeout(PATIENCE, connect=SHORT)
        async with engine_client(factory, timeouts=timeout) as client:
            exc, elapsed = await _raised(client.get(f"http://127.0.0.1:{port}/"))
    return _outcome(exc, httpx.ConnectTimeout, elapsed)


async def _hang(head: bytes, writer: asyncio.StreamWriter) -> None:
    await asyncio.Event().wait()


async def read_timeout(factory: Factory) -> str:
    async with serving(Site({"/hang": _hang})) as url:
        timeout = httpx.Timeout(PATIENCE, read=SHORT)
        async with engine_client(factory, timeouts=timeout) as client:
            exc, elapsed = await _raised(client.get(f"{url}/hang"))
    return _outcome(exc, httpx.ReadTimeout, elapsed)


async def request_timeout(factory: Factory) -> str:
    """``client.get(url, timeout=...)`` overrides the client's timeout for one call."""
    async with serving(Site({"/hang": _hang})) as url, engine_client(factory) as client:
        exc, elapsed = await _raised(client.get(f"{url}/hang", timeout=SHORT))
    return _outcome(exc, httpx.ReadTimeout, elapsed)


async def pool_timeout(factory: Factory) -> str:
    """With one connection busy and a limit of one, the next request waits, then gives up."""
    site = Site({"/hang": _hang})
    async with serving(site) as url:
        timeout = httpx.Timeout(PATIENCE, pool=SHORT)
        async with engine_client(factory, connections=1, timeouts=timeout) as client:
            holder = asyncio.create_task(client.get(f"{url}/hang"))
            await site.arrived.wait()
            exc, elapsed = await _raised(client.get(f"{url}/hang"))
            holder.cancel()
            await asyncio.gather(holder, return_exceptions=True)
    return _outcome(exc, httpx.PoolTimeout, elapsed)


async def closed_without_answer(factory: Factory) -> str:
    async def close(head: bytes, writer: asyncio.StreamWriter) -> None:
        writer.close()

    async with serving(Site({"/close": close})) as url, engine_client(factory) as client:
        exc, _ = await _raised(client.get(f"{url}/close"))
    if type(exc) is httpx.RemoteProtocolError:
        return "ok"
    return type(exc).__name__ if exc else "no error"


async def malformed_answer(factory: Factory) -> str:
    async def garbage(head: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")

    async with serving(Site({"/garbage": garbage})) as url, engine_client(factory) as client:
        exc, _ = await _raised(client.get(f"{url}/garbage"))
    if type(exc) is httpx.RemoteProtocolError:
        return "ok"
    return f"{type(exc).__module__.split('.')[0]}.{type(exc).__name__}" if exc else "no error"


async def truncated_body(factory: Factory) -> str:
    async def short(head: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort")
        writer.close()

    async with serving(Site({"/short": short})) as url, engine_client(factory) as client:
        exc, _ = await _raised(client.get(f"{url}/short"))
    if isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError):
        return "ok"
    return type(exc).__name__ if exc else "no error"


async def connection_limit(factory: Factory) -> str:
    """20 concurrent requests with a limit of 4 never hold more than 4 connections."""
    arrived = 0
    all_waiting = asyncio.Event()

    async def slow(head: bytes, writer: asyncio.StreamWriter) -> None:
        nonlocal arrived
        arrived += 1
        if arrived >= 4:
            all_waiting.set()
        await asyncio.wait_for(all_waiting.wait(), PATIENCE)
        await asyncio.sleep(0.02)  # server-side service time, so requests overlap
        writer.write(_response("200 OK", b"ok"))

    site = Site({"/slow": slow})
    async with serving(site) as url, engine_client(factory, connections=4) as client:
        replies = await asyncio.gather(
            *(client.get(f"{url}/slow") for _ in range(20)), return_exceptions=True
        )
    failed = [r for r in replies if not isinstance(r, httpx.Response)]
    if failed:
        return f"{len(failed)} failed: {type(failed[0]).__name__}"
    return "ok" if site.open_max <= 4 else f"{site.open_max} connections"


async def redirects(factory: Factory) -> str:
    async def moved(head: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(_response("302 Found", headers="Location: /target\r\n"))

    bodies: list[bytes] = []

    async def target(head: bytes, writer: asyncio.StreamWriter) -> None:
        lower = head.lower()
        if b"transfer-encoding" in lower or b"content-type" in lower:
            bodies.append(head)
        writer.write(_response("200 OK", b"target"))

    site = Site({"/moved": moved, "/target": target})
    async with serving(site) as url, engine_client(factory) as client:
        kept = await client.get(f"{url}/moved")
        followed = await client.get(f"{url}/moved", follow_redirects=True)
    if kept.status_code != 302:
        return f"followed when told not to ({kept.status_code})"
    if followed.text != "target" or len(followed.history) != 1:
        return f"not followed when told to ({followed.status_code})"
    return "ok" if not bodies else "GET with a body"


async def streaming(factory: Factory) -> str:
    """The first chunk reaches ``client.stream`` before the server sends the second."""
    first_seen = asyncio.Event()

    async def chunked(head: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        await writer.drain()
        await asyncio.wait_for(first_seen.wait(), PATIENCE)
        writer.write(b"6\r\nsecond\r\n0\r\n\r\n")

    async with serving(Site({"/chunked": chunked})) as url, engine_client(factory) as client:
        received = b""
        try:
            async with client.stream("GET", f"{url}/chunked") as response:
                async for chunk in response.aiter_bytes():
                    received += chunk
                    first_seen.set()
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__} (buffered the body?)"
    return "ok" if received == b"firstsecond" else f"got {received!r}"


async def decoding(factory: Factory) -> str:
    """A gzip body is decoded exactly once and keeps its Content-Encoding header."""

    async def zipped(head: bytes, writer: asyncio.StreamWriter) -> None:
        body = gzip.compress(b"plain text")
        writer.write(_response("200 OK", body, "Content-Encoding: gzip\r\n"))

    async with serving(Site({"/gzip": zipped})) as url, engine_client(factory) as client:
        response = await client.get(f"{url}/gzip")
    if response.text != "plain text":
        return f"body {response.content[:20]!r}"
    return "ok" if response.headers.get("content-encoding") == "gzip" else "header dropped"


async def no_cookies(factory: Factory) -> str:
    async def set_cookie(head: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(_response("200 OK", b"set", "Set-Cookie: session=secret\r\n"))

    async def echo(head: bytes, writer: asyncio.StreamWriter) -> None:
        cookies = [line for line in head.split(b"\r\n") if line.lower().startswith(b"cookie:")]
        writer.write(_response("200 OK", b"".join(cookies)))

    async with (
        serving(Site({"/set": set_cookie, "/echo": echo})) as url,
        engine_client(factory) as client,
    ):
        # A host name, not an IP address: aiohttp's own jar ignores cookies from IPs.
        url = url.replace("127.0.0.1", "localhost")
        await client.get(f"{url}/set")
        echoed = await client.get(f"{url}/echo")
    return "ok" if not echoed.content else f"sent {echoed.text}"


CHECKS: dict[str, Check] = {
    "refused -> ConnectError": refused,
    "connect timeout -> ConnectTimeout": connect_timeout,
    "read timeout -> ReadTimeout": read_timeout,
    "per-request timeout -> ReadTimeout": request_timeout,
    "pool timeout -> PoolTimeout": pool_timeout,
    "closed, no answer -> RemoteProtocolError": closed_without_answer,
    "garbled answer -> RemoteProtocolError": malformed_answer,
    "truncated body -> RemoteProtocol/ReadError": truncated_body,
    "connection limit honoured": connection_limit,
    "follow_redirects honoured": redirects,
    "client.stream streams": streaming,
    "gzip decoded once": decoding,
    "no cookies kept": no_cookies,
}


async def matrix(engines: list[str]) -> dict[str, dict[str, str]]:
    """``{check: {engine: verdict}}``; a check that crashes reports its exception."""
    results: dict[str, dict[str, str]] = {}
    for name, check in CHECKS.items():
        results[name] = {}
        for engine in engines:
            try:
                verdict = await asyncio.wait_for(check(ENGINES[engine]), PATIENCE * 6)
            except Exception as exc:
                verdict = f"crashed: {type(exc).__name__}"
            results[name][engine] = verdict
    return results


def render(results: dict[str, dict[str, str]]) -> str:
    """The matrix as a fixed-width table, each column as wide as its longest cell."""
    engines = list(next(iter(results.values())))
    first = max(len(c) for c in results) + 2
    widths = {e: max(len(e), *(len(row[e]) for row in results.values())) + 2 for e in engines}
    lines = [f"{'check':<{first}}" + "".join(f"{e:>{widths[e]}}" for e in engines)]
    for name, row in results.items():
        lines.append(f"{name:<{first}}" + "".join(f"{row[e]:>{widths[e]}}" for e in engines))
    return "\n".join(lines)
