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
So aiohttp's pool it is, under a transport of our own (``_Transport``;
httpx-aiohttp's, as released, reported errors wrongly and cost more), with
corrections that let jobs handle errors as httpx documents them:

- Errors are chosen by aiohttp's exception type. httpx-aiohttp reports a
  refused connection, a reset, and a server that hangs up without answering
  all as ``ConnectTimeout``, and a garbled answer as a raw aiohttp exception.
- A request that timed out waiting for a free connection raises
  ``PoolTimeout``. aiohttp's connect timeout covers waiting and connecting
  alike; the pool notes which one the request was doing.
- aiohttp keeps no cookies: its own jar would send cookies one job's upstream
  set on every later request to that host name (httpx's jar is off too, see
  ``SharedClient``).
- A body already in memory is sent with its length: on a followed redirect,
  httpx-aiohttp sent a GET's empty body chunked.

CPU per call (keep-alive, ratio to a bare aiohttp session in the same run;
2026-12-03, busy machine): ``python -m bench.client --quick --runs 3``, two
invocations, httpx-aiohttp as released 2.55x and 2.96x, this client 2.26x and
2.77x, :func:`aiohttp_session` 1.02x and 1.10x; the four interleaved in one
process (5 x 3000 calls, medians): 225, 198, 82 us against aiohttp's 74
(3.03x, 2.67x, 1.11x); the client before these changes, against the same
reference an hour earlier, 418 against 126 us (3.3x, as issue 20 measured).
Where the call went (cProfile, 3000 calls):
httpx's URL parser, pure Python, about a tenth (a URL string is now parsed
once, ``SharedClient``); httpx-aiohttp's per-call glue (headers handed to
aiohttp as an ``httpx.Headers`` it decodes one by one, a ``ClientTimeout``
built per call, the body read through two async iterators and a context
manager per chunk), about a fifth (now ``_Transport``).  What remains above
aiohttp is httpx's own request and response models (``build_request``,
``Headers``, ``Response.aread`` through its decoders, the auth and redirect
loops): 120-150 us, which no transport can remove while ``http_client()``
returns an ``httpx.AsyncClient``.  Hence :func:`aiohttp_session`, the same
pool through aiohttp's API, for calls where that CPU counts (fan-out jobs).
Inside an async view with 1000 requests in flight a call costs more than
alone, 548 us through this client and 227 us through the session
(``python -m bench.inproc --views async,client,session``): the garbage
collector walking what every call in flight keeps alive, which ``asgi.py``
now does less often (see ``asgi._freeze_startup_objects``).

Each request is counted by host and status class in
``asyncapp_http_client_requests`` (``error`` when no answer came; past
``ASYNCAPP_HTTP_METRIC_HOSTS`` distinct hosts, as host ``other``), in the
transport, where failures without a response are seen too (httpx's event
hooks see only responses).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import httpx
import yarl
from multidict import CIMultiDict

from asyncapp import metrics
from asyncapp.errors import NotRunning
from asyncapp.settings import Settings

#: The client :func:`http_client` returns in this context (set per request by ``asgi.py``).
bound: contextvars.ContextVar[httpx.AsyncClient] = contextvars.ContextVar("asyncapp_http")
_open: list[httpx.AsyncClient] = []
#: True while the current request waits for a free connection (set by ``_Connector``).
_queued: contextvars.ContextVar[bool] = contextvars.ContextVar("asyncapp_http_queued")

#: httpx's exception for each aiohttp exception, the first match wins.
_ERRORS: tuple[tuple[type[Exception], type[httpx.TransportError]], ...] = (
    (aiohttp.ServerTimeoutError, httpx.ReadTimeout),
    (aiohttp.ClientConnectorError, httpx.ConnectError),  # refused, DNS, TLS handshake
    (aiohttp.ServerDisconnectedError, httpx.RemoteProtocolError),
    (aiohttp.ClientResponseError, httpx.RemoteProtocolError),  # not HTTP
    (aiohttp.ClientConnectionError, httpx.ReadError),  # reset while waiting for the answer
    (aiohttp.ClientPayloadError, httpx.ReadError),
    (aiohttp.InvalidURL, httpx.UnsupportedProtocol),
    (aiohttp.NonHttpUrlClientError, httpx.UnsupportedProtocol),
)

#: Entries each per-client cache (URLs, timeouts, counters) holds before it starts
#: again empty: every call an app repeats hits it, and one-off URLs cannot grow it.
CACHE_SIZE = 512
#: The ``host`` label of requests to hosts past ``ASYNCAPP_HTTP_METRIC_HOSTS``.
OTHER_HOSTS = "other"

log = logging.getLogger("asyncapp.http")


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


def _httpx_error(exc: BaseException) -> type[httpx.TransportError] | None:
    """The httpx exception for aiohttp's ``exc``."""
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return httpx.PoolTimeout if _queued.get(False) else httpx.ConnectTimeout
    return next((error for kind, error in _ERRORS if isinstance(exc, kind)), None)


@contextlib.contextmanager
def _mapped(request: httpx.Request) -> Iterator[None]:
    """Raise aiohttp's errors as the ``httpx.TransportError`` httpx itself would."""
    try:
        yield
    except aiohttp.ClientError as exc:
        error = _httpx_error(exc)
        if error is None:
            raise
        raise error(str(exc) or type(exc).__name__, request=request) from exc


class _Body(httpx.AsyncByteStream):
    """A response body that aiohttp is still receiving, read chunk by chunk as it arrives."""

    def __init__(self, response: aiohttp.ClientResponse, request: httpx.Request) -> None:
        self._response = response
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _mapped(self._request):
            async for chunk in self._response.content.iter_any():
                yield chunk

    async def aclose(self) -> None:
        self._response.release()


class _Transport(httpx.AsyncBaseTransport):
    """httpx's transport interface over an aiohttp session without cookies.

    Written for the calls jobs and views make: per call it does no more than
    aiohttp's own request needs (headers handed over as decoded pairs, the
    ``ClientTimeout`` of each timeout setting built once, the counter child of
    each host and status class looked up once), and a body that arrived with
    the response head (a small answer on a kept-alive connection usually does)
    is taken from aiohttp's buffer at once and its connection returned to the
    pool, instead of through an async iterator.
    """

    def __init__(
        self, limits: httpx.Limits, timeout: httpx.Timeout, *, metric_hosts: int = 100
    ) -> None:
        self.limits = limits
        self.timeout = timeout
        #: Distinct ``host`` labels counted; the requests to further hosts count as
        #: ``other`` (a job that calls a host per user must not grow /metrics forever).
        self.metric_hosts = metric_hosts
        self._hosts: set[str] = set()
        self.ssl_context = httpx.create_ssl_context()
        self._session: aiohttp.ClientSession | None = None
        self._timeouts: dict[tuple[float | None, ...], aiohttp.ClientTimeout] = {}
        self._urls: dict[str, yarl.URL] = {}
        self._counters: dict[tuple[str, str], Any] = {}

    @property
    def session(self) -> aiohttp.ClientSession:
        """The aiohttp session under the client (made on first use, on the running loop)."""
        if self._session is None:
            connector = _Connector(
                limit=self.limits.max_connections or 0,
                keepalive_timeout=self.limits.keepalive_expiry,
                ssl=self.ssl_context,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                cookie_jar=aiohttp.DummyCookieJar(),
                # What callers of aiohttp_session() get; httpx's calls pass their own.
                timeout=self._timeout(self.timeout.as_dict()),
                headers={"user-agent": "asyncapp"},
            )
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request``; failures raise the ``httpx.TransportError`` httpx itself would."""
        data: Any = None
        headers = _headers(request.headers)
        if isinstance(request.stream, httpx.ByteStream):
            # In memory (also a redirected request's body, which httpx hands
            # over as a stream): sent with its length, never chunked.
            data = await request.aread() or None
        else:
            data = request.stream
            headers.popall("transfer-encoding", None)  # aiohttp chunks it itself
        token = _queued.set(False)
        host = request.url.host
        try:
            with _mapped(request):
                response = await self.session.request(
                    request.method,
                    self._url(request.url),
                    headers=headers,
                    data=data,
                    allow_redirects=False,
                    auto_decompress=False,  # httpx decodes, as its users expect
                    compress=False,
                    timeout=self._timeout(request.extensions.get("timeout")),
                    server_hostname=request.extensions.get("sni_hostname"),
                )
        except httpx.TransportError:
            self._count(host, "error")
            raise
        finally:
            _queued.reset(token)
        self._count(host, metrics.status_class(response.status))
        content = response.content
        stream: httpx.AsyncByteStream
        if content.is_eof():
            # Public aiohttp API (StreamReader.is_eof/read_nowait, 3.x).
            stream = httpx.ByteStream(content.read_nowait())
            response.release()
        else:
            stream = _Body(response, request)
        extensions: dict[str, Any] = {"http_version": b"HTTP/1.1"}
        if response.reason:
            extensions["reason_phrase"] = response.reason.encode()
        return httpx.Response(
            response.status,
            headers=response.raw_headers,
            stream=stream,
            request=request,
            extensions=extensions,
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()

    def _url(self, url: httpx.URL) -> yarl.URL:
        text = str(url)
        parsed = self._urls.get(text)
        if parsed is None:
            if len(self._urls) >= CACHE_SIZE:
                self._urls.clear()
            # httpx has percent-encoded it already: yarl must not again.
            parsed = self._urls[text] = yarl.URL(text, encoded=True)
        return parsed

    def _timeout(self, phases: dict[str, float | None] | None) -> aiohttp.ClientTimeout:
        phases = phases or {}
        key = (phases.get("connect"), phases.get("read"), phases.get("pool"))
        timeout = self._timeouts.get(key)
        if timeout is None:
            if len(self._timeouts) >= CACHE_SIZE:
                self._timeouts.clear()
            # aiohttp's connect timeout covers waiting for a pooled connection
            # and connecting; _Connector tells the two apart (PoolTimeout).
            timeout = self._timeouts[key] = aiohttp.ClientTimeout(
                sock_connect=key[0], sock_read=key[1], connect=key[2]
            )
        return timeout

    def _count(self, host: str, status: str) -> None:
        child = self._counters.get((host, status))
        if child is None:
            if host not in self._hosts:
                if len(self._hosts) >= self.metric_hosts:
                    if OTHER_HOSTS not in self._hosts:
                        log.warning(
                            "the shared HTTP client has called %d hosts: requests to "
                            "further hosts are counted as host=%r in %s "
                            "(ASYNCAPP_HTTP_METRIC_HOSTS)",
                            self.metric_hosts,
                            OTHER_HOSTS,
                            "asyncapp_http_client_requests",
                        )
                        self._hosts.add(OTHER_HOSTS)
                    self._count(OTHER_HOSTS, status)
                    return
                self._hosts.add(host)
            if len(self._counters) >= CACHE_SIZE:
                self._counters.clear()
            child = self._counters[host, status] = metrics.HTTP_REQUESTS.labels(host, status)
        child.inc()


def _headers(headers: httpx.Headers) -> CIMultiDict[str]:
    """httpx's request headers as aiohttp takes them, decoded as httpx would."""
    try:
        return CIMultiDict(
            [(name.decode("ascii"), value.decode("ascii")) for name, value in headers.raw]
        )
    except UnicodeDecodeError:
        return CIMultiDict(headers.multi_items())


class _NoCookies(httpx.Cookies):
    def extract_cookies(self, response: httpx.Response) -> None:
        """Keep nothing from ``Set-Cookie``."""


class SharedClient(httpx.AsyncClient):
    """An ``httpx.AsyncClient`` that keeps no cookies between requests.

    One client serves every job and view of the app: a cookie one job's
    upstream sets must not ride along on another job's requests.  Send a
    ``Cookie`` header with the request when a call needs one.  (Skipping the cookie jar
    also saves httpx about 40 us of work per response.)

    A URL given as a string is parsed once: httpx's parser (pure Python) was
    about a tenth of the CPU of a call, and jobs and views call the same URLs
    again and again.
    """

    def __init__(self, **kwargs: object) -> None:
        self._merged: dict[str, httpx.URL] = {}
        transport = kwargs.get("transport")
        self._aiohttp = transport if isinstance(transport, _Transport) else None
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._cookies = _NoCookies()

    @property
    def aiohttp_session(self) -> aiohttp.ClientSession:
        """The aiohttp session this client sends through (see :func:`aiohttp_session`).

        :raises TypeError: if this client was built over another transport.
        """
        if self._aiohttp is None:
            raise TypeError("this client does not send through an aiohttp session")
        return self._aiohttp.session

    @property
    def cookies(self) -> httpx.Cookies:
        return self._cookies

    @cookies.setter
    def cookies(self, cookies: httpx._types.CookieTypes) -> None:
        raise TypeError("the shared client keeps no cookies; send a Cookie header per request")

    @property
    def base_url(self) -> httpx.URL:
        return super().base_url

    @base_url.setter
    def base_url(self, url: httpx.URL | str) -> None:
        httpx.AsyncClient.base_url.fset(self, url)  # type: ignore[attr-defined]
        self._merged.clear()

    def _merge_url(self, url: httpx.URL | str) -> httpx.URL:
        # Overrides a private method of httpx's BaseClient (read from httpx 0.23
        # to 0.29): the URL a request goes to. httpx.URL is immutable, so one
        # object serves every request to the same string.
        if not isinstance(url, str):
            return super()._merge_url(url)
        merged = self._merged.get(url)
        if merged is None:
            if len(self._merged) >= CACHE_SIZE:
                self._merged.clear()
            merged = self._merged[url] = super()._merge_url(url)
        return merged


def open_client(settings: Settings) -> httpx.AsyncClient:
    """A new shared client configured from settings; the caller closes it."""
    limits = httpx.Limits(
        max_connections=settings.http_max_connections,
        max_keepalive_connections=settings.http_max_connections,
    )
    timeout = httpx.Timeout(settings.http_timeout)
    client = SharedClient(
        transport=_Transport(limits, timeout, metric_hosts=settings.http_metric_hosts),
        timeout=timeout,
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
    token = bound.set(client)
    try:
        yield
    finally:
        bound.reset(token)


def http_client() -> httpx.AsyncClient:
    """The shared ``httpx.AsyncClient`` of the running app, for jobs and async views.

    Do not close it; asyncapp closes it at shutdown.

    :raises NotRunning: outside a running app.
    """
    client = bound.get(None)
    if client is not None:
        return client
    if len(_open) == 1:
        return _open[0]
    raise NotRunning("http_client()")


def aiohttp_session() -> aiohttp.ClientSession:
    """The ``aiohttp.ClientSession`` under :func:`http_client`, for calls where CPU counts.

    The same connections, connection limit, timeouts (``ASYNCAPP_HTTP_TIMEOUT``
    for connecting, waiting for a connection and each read) and no cookie jar
    as the shared client, at aiohttp's cost per call rather than httpx's on
    top of it (``python -m bench.client``: about 1.0x a bare aiohttp session
    against about 2.5x for ``http_client().get``).  The price is aiohttp's API:
    aiohttp's exceptions (``aiohttp.ClientError``, ``asyncio.TimeoutError``),
    not httpx's; release every response (``async with session.get(url) as r``);
    and the calls are not counted in ``asyncapp_http_client_requests``.  Do
    not close it; asyncapp closes it with the shared client.

    :raises NotRunning: outside a running app.
    """
    client = http_client()
    if not isinstance(client, SharedClient):
        raise NotRunning("aiohttp_session()")
    return client.aiohttp_session
