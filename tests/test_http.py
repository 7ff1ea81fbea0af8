"""The shared HTTP client: httpx's API and exceptions over aiohttp's pool, no cookies kept.

Every upstream is a real server on loopback: a raw asyncio one where the test
must control each byte sent (or not sent), aiohttp's where it need not.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from aiohttp import web

from asyncapp import aiohttp_session as asyncapp_aiohttp_session
from asyncapp import http
from asyncapp.settings import load_settings
from tests.conftest import loopback_site

#: A raw route gets the request head and the connection's writer.
RawRoute = Callable[[bytes, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def raw_site(routes: dict[str, RawRoute]) -> AsyncIterator[str]:
    """A keep-alive HTTP/1.1 server on 127.0.0.1 that hands each request head to its route."""
    connections: set[asyncio.Task[Any]] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.add(asyncio.current_task())  # type: ignore[arg-type]
        try:
            while not writer.is_closing():
                head = await reader.readuntil(b"\r\n\r\n")
                _method, target, _ = head.split(b"\r\n", 1)[0].split(b" ")
                await routes[target.decode()](head, writer)
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            writer.close()
        except asyncio.CancelledError:
            writer.close()  # the test is over; ending quietly keeps asyncio from logging

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        for task in connections:
            task.cancel()
        await asyncio.gather(*connections, return_exceptions=True)


def response(status: str, body: bytes = b"", headers: str = "") -> bytes:
    return f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n{headers}\r\n".encode() + body


@contextlib.asynccontextmanager
async def shared_client(**settings: Any) -> AsyncIterator[httpx.AsyncClient]:
    """The shared client as the runtime opens it, with ``settings`` (names without prefix)."""
    client = http.open_client(
        load_settings({f"ASYNCAPP_{k.upper()}": v for k, v in settings.items()})
    )
    try:
        yield client
    finally:
        await http.close_client(client)


@pytest.fixture
async def upstream() -> AsyncIterator[str]:
    """A real HTTP server on loopback that sets a cookie and echoes the Cookie header."""

    async def set_cookie(request: web.Request) -> web.Response:
        response = web.Response(text="set")
        response.set_cookie("session", "job-a-secret")
        return response

    async def echo(request: web.Request) -> web.Response:
        return web.Response(text=request.headers.get("Cookie", ""))

    async with loopback_site({"/set": set_cookie, "/echo": echo}) as url:
        # A host name: aiohttp's own cookie jar ignores cookies set by IP addresses.
        yield url.replace("127.0.0.1", "localhost")


async def test_shared_client_keeps_no_cookies_between_requests(upstream: str) -> None:
    async with shared_client() as client:
        assert (await client.get(f"{upstream}/set")).text == "set"
        assert (await client.get(f"{upstream}/echo")).text == ""
        sent = await client.get(f"{upstream}/echo", headers={"Cookie": "explicit=1"})
        assert sent.text == "explicit=1"
        with pytest.raises(TypeError, match="Cookie header"):
            client.cookies = {"a": "b"}  # type: ignore[assignment]


async def test_refused_connection_raises_connect_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # bound, not listening: connecting is refused
        port = sock.getsockname()[1]
        async with shared_client() as client:
            with pytest.raises(httpx.ConnectError):
                await client.get(f"http://127.0.0.1:{port}/")


@pytest.fixture
async def slow_upstream() -> AsyncIterator[tuple[str, asyncio.Event]]:
    """``/slow`` never answers while the test runs; the event is set once a request arrived."""
    arrived = asyncio.Event()

    async def slow(head: bytes, writer: asyncio.StreamWriter) -> None:
        arrived.set()
        await asyncio.Event().wait()

    async with raw_site({"/slow": slow}) as url:
        yield url, arrived


async def test_slow_upstream_raises_read_timeout(
    slow_upstream: tuple[str, asyncio.Event],
) -> None:
    url, _ = slow_upstream
    async with shared_client(http_timeout=0.2) as client:
        with pytest.raises(httpx.ReadTimeout):
            await client.get(f"{url}/slow")


async def test_waiting_for_a_free_connection_raises_pool_timeout(
    slow_upstream: tuple[str, asyncio.Event],
) -> None:
    url, arrived = slow_upstream
    async with shared_client(http_max_connections=1) as client:
        holder = asyncio.create_task(client.get(f"{url}/slow"))
        await arrived.wait()
        with pytest.raises(httpx.PoolTimeout):
            await client.get(f"{url}/slow", timeout=httpx.Timeout(5, pool=0.2))
        holder.cancel()
        await asyncio.gather(holder, return_exceptions=True)


async def test_connection_limit_is_honoured() -> None:
    open_now = open_max = 0
    both_arrived = asyncio.Event()
    arrivals = 0

    async def count(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal open_now, open_max, arrivals
        open_now += 1
        open_max = max(open_max, open_now)
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                arrivals += 1
                if arrivals >= 2:
                    both_arrived.set()
                await both_arrived.wait()
                writer.write(response("200 OK", b"ok"))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            open_now -= 1
            writer.close()

    server = await asyncio.start_server(count, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/"
    async with server, shared_client(http_max_connections=2) as client:
        replies = await asyncio.gather(*(client.get(url) for _ in range(8)))
    assert [r.text for r in replies] == ["ok"] * 8
    assert open_max == 2


async def test_server_hanging_up_without_answer_raises_remote_protocol_error() -> None:
    async def hang_up(head: bytes, writer: asyncio.StreamWriter) -> None:
        writer.close()

    async with raw_site({"/": hang_up}) as url, shared_client() as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get(f"{url}/")


async def test_answer_that_is_not_http_raises_remote_protocol_error() -> None:
    async def garbage(head: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")

    async with raw_site({"/": garbage}) as url, shared_client() as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get(f"{url}/")


async def test_redirects_follow_the_per_request_setting_and_send_no_body_on_get() -> None:
    heads: list[bytes] = []

    async def moved(head: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(response("302 Found", headers="Location: /target\r\n"))

    async def target(head: bytes, writer: asyncio.StreamWriter) -> None:
        heads.append(head.lower())
        writer.write(response("200 OK", b"target"))

    async with raw_site({"/moved": moved, "/target": target}) as url, shared_client() as client:
        kept = await client.get(f"{url}/moved")
        followed = await client.get(f"{url}/moved", follow_redirects=True)

    assert kept.status_code == 302
    assert (followed.text, len(followed.history)) == ("target", 1)
    assert b"transfer-encoding" not in heads[0]
    assert b"content-type" not in heads[0]


async def test_stream_yields_each_chunk_as_it_arrives() -> None:
    first_read = asyncio.Event()

    async def chunked(head: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        await first_read.wait()  # the second chunk exists only once the first was read
        writer.write(b"6\r\nsecond\r\n0\r\n\r\n")

    chunks: list[bytes] = []
    async with (
        raw_site({"/": chunked}) as url,
        shared_client(http_timeout=5) as client,
        client.stream("GET", f"{url}/") as streamed,
    ):
        async for chunk in streamed.aiter_bytes():
            chunks.append(chunk)
            first_read.set()
    assert chunks == [b"first", b"second"]


async def test_requests_are_counted_by_host_and_status_class(upstream: str) -> None:
    from asyncapp.metrics import HTTP_REQUESTS

    def count(host: str, status: str) -> float:
        return float(HTTP_REQUESTS.labels(host, status)._value.get())

    before_ok, before_error = count("localhost", "2xx"), count("127.0.0.1", "error")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # bound, not listening: connecting is refused
        refused = f"http://127.0.0.1:{sock.getsockname()[1]}/"
        async with shared_client() as client:
            await client.get(f"{upstream}/echo")
            with pytest.raises(httpx.ConnectError):
                await client.get(refused)
    assert count("localhost", "2xx") == before_ok + 1
    assert count("127.0.0.1", "error") == before_error + 1


async def test_hosts_past_the_label_limit_are_counted_as_other() -> None:
    from asyncapp.metrics import HTTP_REQUESTS

    def count(host: str) -> float:
        return float(HTTP_REQUESTS.labels(host, "error")._value.get())

    hosts = ["127.0.0.21", "127.0.0.22", "127.0.0.23", "127.0.0.24"]
    before = {host: count(host) for host in [*hosts, http.OTHER_HOSTS]}
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # a port nothing listens on, on any loopback address
        port = sock.getsockname()[1]
        async with shared_client(http_metric_hosts=2) as client:
            for host in hosts:
                with pytest.raises(httpx.ConnectError):
                    await client.get(f"http://{host}:{port}/")
    assert [count(host) - before[host] for host in hosts] == [1, 1, 0, 0]
    assert count(http.OTHER_HOSTS) - before[http.OTHER_HOSTS] == 2


async def test_a_url_string_is_parsed_once_per_base_url(
    upstream: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import httpx._urls  # the module whose urlparse parses each URL string

    parsed: list[str] = []

    def counting(url: str = "", **kwargs: Any) -> Any:
        parsed.append(url)
        return urlparse(url, **kwargs)

    urlparse = httpx._urls.urlparse
    monkeypatch.setattr(httpx._urls, "urlparse", counting)
    async with shared_client() as client:
        first = await client.get(f"{upstream}/echo")
        second = await client.get(f"{upstream}/echo")
        assert parsed.count(f"{upstream}/echo") == 1
        assert second.request.url == first.request.url
        client.base_url = f"{upstream}/"
        relative = await client.get("echo")
        assert relative.request.url == first.request.url
        client.base_url = upstream.replace("localhost", "127.0.0.1")
        assert (await client.get("echo")).request.url.host == "127.0.0.1"


async def test_a_body_that_arrived_with_the_head_reads_like_a_streamed_one() -> None:
    async def small(head: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(response("200 OK", b"whole"))

    async with raw_site({"/": small}) as url, shared_client(http_max_connections=1) as client:
        async with client.stream("GET", f"{url}/") as streamed:
            raw = [chunk async for chunk in streamed.aiter_raw()]
        got = await client.get(f"{url}/")  # one connection: the first one went back
    assert raw == [b"whole"]
    assert streamed.elapsed.total_seconds() > 0
    assert (got.text, got.elapsed.total_seconds() > 0) == ("whole", True)


async def test_aiohttp_session_shares_the_pool_timeouts_and_no_cookies(
    upstream: str, slow_upstream: tuple[str, asyncio.Event]
) -> None:
    import aiohttp

    slow, _ = slow_upstream
    async with shared_client(http_timeout=0.2, http_max_connections=1) as client:
        with http.bind(client):
            session = asyncapp_aiohttp_session()
            assert session is client.aiohttp_session  # type: ignore[attr-defined]
            async with session.get(f"{upstream}/set") as set_cookie:
                assert await set_cookie.text() == "set"
            async with session.get(f"{upstream}/echo") as echoed:
                assert await echoed.text() == ""
            # The one connection the limit allows is the one httpx uses next.
            assert (await client.get(f"{upstream}/echo")).text == ""
            with pytest.raises(aiohttp.ServerTimeoutError):
                async with session.get(f"{slow}/slow"):
                    pass


def test_aiohttp_session_outside_a_running_app_is_a_clear_error() -> None:
    from asyncapp import NotRunning

    with pytest.raises(NotRunning, match="http_client"):
        asyncapp_aiohttp_session()
