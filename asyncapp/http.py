"""The one shared HTTP client: httpx's API over aiohttp's connection pool.

Users get ``httpx.AsyncClient`` (part of the contract); the engine under it
is the fastest one that keeps httpx's promises. ``python -m bench.client``
runs each engine in its own process on one core against an upstream on the
other; ratios to plain aiohttp in the same round, medians of 13 rounds on a
busy 2-core machine::

                      2000 concurrent GETs (200 ms)  100 keep-alive clients, loop
    engine            makespan    CPU                req/s    p99     CPU/request
    plain aiohttp     1.08 s      0.63 s             9800     22 ms   81 us
    httpx-aiohttp     1.57x       1.75x              0.31x    5.6x    3.3x
    pyreqwest         0.79x       0.91x              0.29x    5.7x    3.3x
    pyqwest           1.44x       1.79x              0.17x    8.6x    5.5x
    httpx's own pool  40x         48x                0.01x    236x    164x

httpx's own pool spends its time choosing among its connections (13 ms of CPU
per request with 100 of them): unusable for a client that serves every job
and view. pyreqwest (reqwest under httpx) is the fastest at fan-out but breaks
httpx's promises in ways no thin layer mends: ``client.stream`` gets no
headers until 64 KiB of body arrived, a read timeout surfaces as
``ConnectTimeout`` and a dropped connection as ``ConnectError``, and the
interpreter aborts at exit (SIGABRT from ``PyGILState_Release``) in 13 of 30
runs after a server hung up on it, 1 of 30 after plain GETs. pyqwest needs
half again as much CPU per keep-alive request, which is what async views make,
has no pool timeout, and at times held 8 to 14 connections under a limit of 4.
So aiohttp's pool it is, through httpx-aiohttp's transport, with corrections
that cost no measurable CPU (258 against 257 us per keep-alive request,
interleaved in one process) and let jobs handle errors as httpx documents
them:

- Errors are chosen by aiohttp's exception type. httpx-aiohttp reports a
  refused connection, a reset, and a server that hangs up without answering
  all as ``ConnectTimeout``, and a garbled answer as a raw aiohttp exception.
- A request that timed out waiting for a free connection raises
  ``PoolTimeout``. aiohttp's connect timeout covers waiting and connecting
  alike; the pool notes which one the request was doing.
- aiohttp keeps no cookies: its own jar would send cookies one job's upstream
  set on every later request to that host name (httpx's jar is off too, see
  ``SharedClient``).
- A body already in memory is read before the transport sees it: on a
  followed redirect, httpx-aiohttp sent a GET's empty body chunked.

Each request is counted by host and status class in
``asyncapp_http_client_requests`` (``error`` when no answer came), in the
transport, where failures without a response are seen too (httpx's event
hooks see only responses).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

from asyncapp import metrics
from asyncapp.errors import NotRunning
from asyncapp.settings import Settings

_bound: contextvars.ContextVar[httpx.AsyncClient] = contextvars.ContextVar("asyncapp_http")
_open: list[httpx.AsyncClient] = []
#: True while the current request waits for a free connection (set by ``_Connector``).
_queued: contextvars.ContextVar[bool] = contextvars.ContextVar("asyncapp_http_queued")

#: httpx's exception for each aiohttp exception, the first match wins.
_ERRORS: tuple[tuple[type[Exception], type[httpx.TransportError]], ...] = (
    (aiohttp.ServerTimeoutError, httpx.ReadTimeout),
    (aiohttp.ClientConnectorError, httpx.ConnectError),  # refused, DNS, TLS handshake
    (aiohttp.ServerDisconnectedError, httpx.RemoteProtocolError),
    (aiohttp.ClientResponseError, httpx.RemoteProtocolError),  # not HTTP
    (aiohttp.ClientOSError, httpx.ReadError),  # reset while waiting for the answer
    (aiohttp.ClientPayloadError, httpx.ReadError),
)


class _Connector(aiohttp.TCPConnector):
    """aiohttp's pool, noting in ``_queued`` whether the current request waits for a slot.

    aiohttp's trace events would say the same through its public API, but
    every traced request pays for all of them: 20 us more CPU per keep-alive
    request (8%), measured. This overrides the private method that does the
    waiting (read from aiohttp 3.10.11 to 3.14; pyproject.toml asks for
    3.10.11+); if a release renames it, pool timeouts show up as
    ``ConnectTimeout`` again, and the test of pool timeouts fails.
    """

    async def _wait_for_available_connection(self, *args: Any) -> None:
        _queued.set(True)
        await super()._wait_for_available_connection(*args)
        _queued.set(False)


def _httpx_error(exc: Exception) -> type[httpx.TransportError] | None:
    """The httpx exception for aiohttp's ``exc`` raised before the response head arrived."""
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return httpx.PoolTimeout if _queued.get(False) else httpx.ConnectTimeout
    return next((error for kind, error in _ERRORS if isinstance(exc, kind)), None)


class _Transport(AiohttpTransport):
    """httpx-aiohttp's transport raising httpx's exceptions, over a session without cookies."""

    def __init__(self, limits: httpx.Limits) -> None:
        super().__init__(limits=limits, client=self._session)

    def _session(self) -> aiohttp.ClientSession:
        connector = _Connector(
            limit=self.limits.max_connections or 0,
            keepalive_timeout=self.limits.keepalive_expiry,
            ssl=self.ssl_context,
        )
        return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request``; failures raise the ``httpx.TransportError`` httpx itself would."""
        if isinstance(request.stream, httpx.ByteStream):
            # httpx hands a redirected request its body as a stream, which
            # httpx-aiohttp would send chunked even when empty (a GET with a body).
            await request.aread()
        token = _queued.set(False)
        host = request.url.host
        try:
            response = await super().handle_async_request(request)
        except (httpx.TransportError, aiohttp.ClientError) as exc:
            metrics.HTTP_REQUESTS.labels(host, "error").inc()
            cause = exc.__cause__ if isinstance(exc, httpx.TransportError) else exc
            error = _httpx_error(cause) if isinstance(cause, Exception) else None
            if error is None:
                raise
            raise error(str(cause) or type(cause).__name__, request=request) from cause
        finally:
            _queued.reset(token)
        metrics.HTTP_REQUESTS.labels(host, metrics.status_class(response.status_code)).inc()
        return response


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
        transport=_Transport(limits),
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
