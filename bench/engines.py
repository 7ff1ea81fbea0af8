"""The candidate engines under the shared ``httpx.AsyncClient``, configured alike.

Each factory takes a connection limit and an ``httpx.Timeout`` and returns the
client the shared client would be with that engine: asyncapp's ``SharedClient``
(no cookie jar), with the engine told to leave redirects, decompression and
cookies to httpx, which is what an ``httpx.AsyncClient`` promises its users.
``bench.client`` times them against plain aiohttp; ``bench.client_checks``
checks what each one raises and honours.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import httpx

from asyncapp.http import SharedClient, open_client
from asyncapp.settings import load_settings

Factory = Callable[[int, httpx.Timeout], httpx.AsyncClient]


def _limits(connections: int) -> httpx.Limits:
    return httpx.Limits(max_connections=connections, max_keepalive_connections=connections)


def httpx_pool(connections: int, timeout: httpx.Timeout) -> httpx.AsyncClient:
    """httpx's own connection pool (httpcore): what ``httpx.AsyncClient()`` gives."""
    return SharedClient(limits=_limits(connections), timeout=timeout)


def httpx_aiohttp(connections: int, timeout: httpx.Timeout) -> httpx.AsyncClient:
    """httpx over ``httpx_aiohttp.AiohttpTransport`` (aiohttp's pool), as shipped so far."""
    from httpx_aiohttp import AiohttpTransport

    return SharedClient(transport=AiohttpTransport(limits=_limits(connections)), timeout=timeout)


def _seconds(value: float | None) -> timedelta | None:
    return None if value is None else timedelta(seconds=value)


def pyreqwest(connections: int, timeout: httpx.Timeout) -> httpx.AsyncClient:
    """httpx over ``pyreqwest``'s transport (reqwest on a Tokio thread).

    reqwest follows redirects and decompresses by default; both are turned off so
    httpx's ``follow_redirects`` and decoding stay in charge.
    """
    from pyreqwest.client import ClientBuilder
    from pyreqwest.compatibility.httpx import HttpxTransport

    builder = (
        ClientBuilder()
        .max_connections(connections)
        .follow_redirects(False)
        .referer(False)
        .gzip(False)
        .brotli(False)
        .zstd(False)
        .deflate(False)
    )
    for phase, value in (
        ("connect_timeout", timeout.connect),
        ("read_timeout", timeout.read),
        ("pool_timeout", timeout.pool),
    ):
        if (span := _seconds(value)) is not None:
            builder = getattr(builder, phase)(span)
    return SharedClient(transport=HttpxTransport(builder.build()), timeout=timeout)


def pyqwest(connections: int, timeout: httpx.Timeout) -> httpx.AsyncClient:
    """httpx over ``pyqwest``'s transport (reqwest, driven from the asyncio loop).

    pyqwest keeps 2 idle connections per host unless told otherwise, follows
    redirects, decompresses, and trusts no CA unless asked: all set here.
    """
    from pyqwest import HTTPTransport
    from pyqwest.httpx import AsyncPyqwestTransport

    engine = HTTPTransport(
        connect_timeout=timeout.connect,
        read_timeout=timeout.read,
        pool_max_idle_per_host=connections,
        max_connections_per_address=connections,
        follow_redirects=False,
        enable_gzip=False,
        enable_brotli=False,
        enable_zstd=False,
        tls_include_system_certs=True,
    )
    return SharedClient(transport=AsyncPyqwestTransport(engine), timeout=timeout)


def shipped(connections: int, timeout: httpx.Timeout) -> httpx.AsyncClient:
    """What ``asyncapp.http.open_client`` builds from settings: the current pick."""
    timeout_s = timeout.read if timeout.read is not None else 10.0
    settings = load_settings(
        {"ASYNCAPP_HTTP_MAX_CONNECTIONS": connections, "ASYNCAPP_HTTP_TIMEOUT": timeout_s}
    )
    client = open_client(settings)
    client.timeout = timeout
    return client


#: The candidates, in the order the tables show them.
ENGINES: dict[str, Factory] = {
    "httpx-aiohttp": httpx_aiohttp,
    "pyreqwest": pyreqwest,
    "pyqwest": pyqwest,
    "httpx-pool": httpx_pool,
    "shipped": shipped,
}
