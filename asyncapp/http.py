"""The one shared HTTP client: httpx's API over aiohttp's connection pool.

Users get ``httpx.AsyncClient`` (part of the contract), but httpx's own pool
does work that grows with the square of open connections: 2000 concurrent
requests took 76 s through it and 1.37 s through the ``httpx-aiohttp``
transport (issue #4's measurements).  So the client is built on that transport.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import httpx
from httpx_aiohttp import AiohttpTransport

from .errors import NotRunning
from .settings import Settings

_bound: contextvars.ContextVar[httpx.AsyncClient] = contextvars.ContextVar("asyncapp_http")
_open: list[httpx.AsyncClient] = []


class _NoCookies(httpx.Cookies):
    def extract_cookies(self, response: httpx.Response) -> None:
        """Keep nothing from ``Set-Cookie``."""


class SharedClient(httpx.AsyncClient):
    """An ``httpx.AsyncClient`` that keeps no cookies between requests.

    One client serves every job and view of the app: a cookie one job's
    upstream sets must not ride along on another job's requests.  Send a
    ``Cookie`` header with the request when a call needs one.  (Skipping the cookie jar
    also saves httpx about 40 us of work per response.)
    """

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._cookies = _NoCookies()

    @property
    def cookies(self) -> httpx.Cookies:
        return self._cookies

    @cookies.setter
    def cookies(self, cookies: httpx._types.CookieTypes) -> None:
        raise TypeError("the shared client keeps no cookies; send a Cookie header per request")


def open_client(settings: Settings) -> httpx.AsyncClient:
    """A new shared client configured from settings; the caller closes it."""
    limits = httpx.Limits(
        max_connections=settings.http_max_connections,
        max_keepalive_connections=settings.http_max_connections,
    )
    client = SharedClient(
        transport=AiohttpTransport(limits=limits),
        timeout=settings.http_timeout,
        headers={"user-agent": "asyncapp"},
    )
    _open.append(client)
    return client


async def close_client(client: httpx.AsyncClient) -> None:
    with contextlib.suppress(ValueError):
        _open.remove(client)
    await client.aclose()


@contextlib.contextmanager
def bind(client: httpx.AsyncClient) -> Iterator[None]:
    """Make ``client`` what :func:`http_client` returns in this context."""
    token = _bound.set(client)
    try:
        yield
    finally:
        _bound.reset(token)


def http_client() -> httpx.AsyncClient:
    """The shared ``httpx.AsyncClient`` of the running app, for jobs and async views.

    Do not close it; asyncapp closes it at shutdown.

    :raises NotRunning: outside a running app.
    """
    client = _bound.get(None)
    if client is not None:
        return client
    if len(_open) == 1:
        return _open[0]
    raise NotRunning("http_client()")
