"""WSGI-to-ASGI bridge for Flask: async views on the loop, sync views in threads.

asgiref's ``WsgiToAsgi`` runs every request through ``sync_to_async`` with
``thread_sensitive=True``: all of Flask on ONE thread, so 20 requests to a view
awaiting 100 ms took 2.09 s.  Running each request in a bounded pool of our own
(``ASYNCAPP_WORKER_THREADS``) fixed that for sync views, but an ``async def``
view still held its thread for as long as it awaited: Flask's stock
``async_to_sync`` blocks the thread until the coroutine, run on the server
loop, is done.  The pool then caps how many async views are in flight, and
every request pays two thread hops.

So a request is routed before Flask sees it, by matching its environ with the
app's own URL adapter:

* endpoint is a coroutine function (also a ``View``/``MethodView`` whose
  handler for this method is one): the whole WSGI call runs in a greenlet on
  the loop thread.  The app's ``async_to_sync`` is replaced so that each
  await switches to the request's task, which awaits the coroutine and
  switches back with its result: the technique of SQLAlchemy's asyncio layer.
  An async view in flight holds a suspended greenlet, not a thread: with
  1000 in flight the server had 2 threads and had grown by about 33 kB per
  request (connection, task, Flask's objects and the greenlet together).
  The greenlet runs in the task's contextvars context, so Flask's request and
  app contexts, and the shared HTTP client bound by ``asgi.py``, are the same
  on both sides of an await.
* anything else (sync views, 404, 405, redirects, apps that override
  ``ensure_sync`` or ``async_to_sync`` themselves): the pool, as before.
  Responses with a Content-Length up to ``BUFFER_LIMIT`` are built in the
  thread and sent by the loop in one go: one thread hop per request, not one
  per ASGI message.

The price is that the sync parts of an async endpoint (before/after/teardown
hooks, error handlers, response iteration) run on the loop too: they must not
block, like the view's own code.  Code running on the loop that calls an async
function synchronously outside such a request gets a ``RuntimeError`` instead
of a deadlock.

Measured with ``python -m bench.adapter``: one Hypercorn process pinned to
one core, wrk on the other, a view awaiting ``asyncio.sleep(0.1)``, no access
log, medians of 3 runs of 10 s on a 2-core machine busy with other work
(load 2-6), so read the ratios within a run more than the absolute figures:

==================  ======================  ======================
                    100 clients             1000 clients
                    req/s  p99     CPU/req  req/s  p99     CPU/req
==================  ======================  ======================
greenlet (here)     855    151 ms  570 us   1250   1.9 s   600 us
thread per request  731    230 ms  596 us   435    3.4 s   1152 us
bare ASGI app       686    184 ms  290 us   1493   1.4 s   335 us
==================  ======================  ======================

At 100 clients every stack is bound by the 100 ms await (1000 req/s at
most).  At 1000, a thread per request caps the views in flight at the pool's
128 and its CPU per request doubles (128 threads taking turns at the GIL and
handing every message to the loop); in-run ratios over three invocations
were 1.3-3.0x (median 1.7x) for greenlets over threads.  The
greenlet path still costs about twice the CPU of a bare ASGI app: that is
Flask's own request handling, now on the loop.

Bodies larger than ``max_body_bytes`` are refused with 413 before Flask sees
them, by ``Content-Length`` when given and while reading otherwise.

Per request, the adapter's own work was cut (2026-12-03; the ASGI app driven
in one process, no server, CPU per request, medians of 5 x 2000 requests on a
busy machine): an async view 304-332 -> 243-249 us, a sync view 317-332 ->
222-224 us.  The loop-or-pool choice is made once per endpoint and method,
and remembered per path, so a path asked again is not URL-matched twice
(Flask still matches it once); a body that comes in one ASGI message (every
GET) is read from a ``BytesIO``, not a ``SpooledTemporaryFile``; the pool
hand-off is ``run_in_executor`` in a copied context instead of asgiref's
``SyncToAsync``; and ``async_to_sync``, which Flask calls for every async
view, no longer copies the view's attributes with ``functools.wraps``.

asgiref internals used (read from asgiref 3.8 to 3.13): ``WsgiToAsgiInstance``
and its ``scope``, ``build_environ``, ``start_response``, ``response_start``,
``response_started``, ``response_content_length`` and ``sync_send``; and
``SyncToAsync.threadlocal.main_event_loop``/``main_event_loop_pid`` (set in
``_in_thread``).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import io
import itertools
import json
import os
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from inspect import iscoroutinefunction
from tempfile import SpooledTemporaryFile
from typing import Any, TypeVar

from asgiref.sync import AsyncToSync, SyncToAsync
from asgiref.sync import async_to_sync as asgiref_async_to_sync
from asgiref.wsgi import WsgiToAsgiInstance
from flask import Flask
from flask.views import MethodView
from greenlet import getcurrent, greenlet

Scope = dict[str, Any]
Message = dict[str, Any]
Environ = dict[str, Any]
T = TypeVar("T")

#: Responses with a Content-Length up to this size are built in the worker
#: thread and sent from the loop in one go; others stream from the thread.
BUFFER_LIMIT = 1 << 20
#: Paths whose loop-or-pool answer is kept (then the cache starts again empty).
PATH_CACHE_SIZE = 1024


class FlaskToAsgi:
    """An ASGI app (HTTP scopes only) serving a Flask app: async views on the loop,
    everything else from a thread pool."""

    def __init__(self, flask_app: Flask, *, threads: int, max_body_bytes: int) -> None:
        self.flask_app = flask_app
        self.max_body_bytes = max_body_bytes
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="asyncapp-http")
        #: Loop or pool, per (endpoint, method): decided once each (``decisions`` counts).
        self._async_endpoints: dict[tuple[str, str], bool] = {}
        self.decisions = 0
        #: The same answer per (method, host, root path, path) seen lately: no URL
        #: match at all for a path asked again, bounded for paths that vary.
        self._async_paths: dict[tuple[str, str, str, str], bool] = {}
        cls = type(flask_app)
        self.greenlets = (
            cls.ensure_sync is Flask.ensure_sync and cls.async_to_sync is Flask.async_to_sync
        )
        if self.greenlets:
            # Flask documents async_to_sync as the override point; an instance
            # attribute overrides it without changing the class of the user's app.
            flask_app.async_to_sync = async_to_sync  # type: ignore[method-assign]

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise ValueError(f"FlaskToAsgi cannot serve {scope['type']!r} scopes")
        declared = _content_length(scope)
        if declared is not None and declared > self.max_body_bytes:
            await self._too_large(send)
            return
        instance = WsgiToAsgiInstance(self.flask_app)
        instance.scope = scope
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        body: Any
        if not message.get("more_body"):
            # The whole body in one message (every GET): no temporary file.
            chunk = message.get("body", b"")
            if len(chunk) > self.max_body_bytes:
                await self._too_large(send)
                return
            body = io.BytesIO(chunk)
        else:
            body = SpooledTemporaryFile(max_size=65536)  # noqa: SIM115 (closed below)
            size = 0
            while True:
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > self.max_body_bytes:
                    body.close()
                    await self._too_large(send)
                    return
                body.write(chunk)
                if not message.get("more_body"):
                    break
                message = await receive()
                if message["type"] == "http.disconnect":
                    body.close()
                    return
            body.seek(0)
        with body:
            try:
                environ = instance.build_environ(scope, body)
            except ValueError:
                await _send_whole(send, 400, b"Bad Request: Too many duplicate headers")
                return
            # asgiref declares sync_send an AsyncToSync; it only ever calls it with a message.
            if self.greenlets and self._is_async(scope, environ):
                instance.sync_send = functools.partial(_await_send, send)  # type: ignore[assignment]
                buffered = await _run_in_greenlet(_respond, self.flask_app, instance, environ)
            else:
                # Used only by streamed responses: an AsyncToSync (5 us) per message
                # sent rather than one built for every request.
                instance.sync_send = functools.partial(_send_from_thread, send)  # type: ignore[assignment]
                buffered = await self._in_pool(instance, environ)
        if buffered is not None:
            start, content = buffered
            await send(start)
            await send({"type": "http.response.body", "body": content})

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def _in_pool(
        self, instance: WsgiToAsgiInstance, environ: Environ
    ) -> tuple[Message, bytes] | None:
        """``_respond`` in a worker thread, in a copy of this task's context.

        What asgiref's ``SyncToAsync`` does for it, less its per-call work
        (two walks over every context variable, a shield, three partials):
        its thread-local naming the server loop is set, so that asgiref's
        ``AsyncToSync`` runs a sync view's async calls on this loop.
        """
        loop = asyncio.get_running_loop()
        run = contextvars.copy_context().run
        return await loop.run_in_executor(
            self.executor, run, _in_thread, loop, self.flask_app, instance, environ
        )

    def _is_async(self, scope: Scope, environ: Environ) -> bool:
        """Whether to serve this request on the loop: :meth:`_endpoint_is_async`, cached.

        Matching depends on the method, the host (host and subdomain rules),
        the root path and the path, and Flask refuses new rules once it has
        served a request, so the answer for a path holds as long as the app.
        """
        key = (environ["REQUEST_METHOD"], environ.get("HTTP_HOST", ""), scope.get("root_path", ""),
               scope["path"])  # fmt: skip
        decided = self._async_paths.get(key)
        if decided is None:
            if len(self._async_paths) >= PATH_CACHE_SIZE:
                self._async_paths.clear()
            decided = self._async_paths[key] = self._endpoint_is_async(environ)
        return decided

    def _endpoint_is_async(self, environ: Environ) -> bool:
        """Whether Flask will dispatch this request to a coroutine function.

        Matched as Flask matches (its ``create_url_adapter``); when matching
        fails or the view is of a shape not recognised here, False: the pool
        serves every request correctly, the loop only those that cannot block.
        The view's shape is examined once per endpoint and method.
        """
        app = self.flask_app
        try:
            # Never None when given a request.
            url_adapter = app.create_url_adapter(app.request_class(environ))
            rule, _ = url_adapter.match(return_rule=True)  # type: ignore[union-attr]
        except Exception:
            return False
        key = (rule.endpoint, environ["REQUEST_METHOD"])
        decided = self._async_endpoints.get(key)
        if decided is None:
            decided = self._async_endpoints[key] = self._view_is_async(*key)
            self.decisions += 1
        return decided

    def _view_is_async(self, endpoint: str, method: str) -> bool:
        view = self.flask_app.view_functions.get(endpoint)
        view_class = getattr(view, "view_class", None)
        if view_class is None:
            return iscoroutinefunction(view)
        if iscoroutinefunction(view_class.dispatch_request):
            return True
        if view_class.dispatch_request is not MethodView.dispatch_request:
            return False
        method = method.lower()
        handler = getattr(view_class, method, None)
        if handler is None and method == "head":
            handler = getattr(view_class, "get", None)
        return iscoroutinefunction(handler)

    async def _too_large(self, send: Any) -> None:
        body = json.dumps(
            {
                "error_message": f"request body is larger than {self.max_body_bytes} bytes",
                "errors": [],
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class _RequestGreenlet(greenlet):
    """Runs one request's WSGI call on the loop thread; its parent is the request's task."""


def async_to_sync(func: Callable[..., Coroutine[Any, Any, T]]) -> Callable[..., T]:
    """``Flask.async_to_sync`` for apps served by :class:`FlaskToAsgi`.

    In a request served on the loop, the call suspends the request's greenlet
    until the coroutine is done; in a worker thread, asgiref's ``async_to_sync``
    runs it on the server loop, as Flask's own does.

    :raises RuntimeError: when called on a thread running an event loop outside
        such a request (blocking there would deadlock the loop).
    """

    # Flask wraps the view again for every request: functools.wraps, copying
    # five attributes and a __dict__, cost more than the switch itself.
    def run(*args: Any, **kwargs: Any) -> T:
        if isinstance(getcurrent(), _RequestGreenlet):
            return _await(func(*args, **kwargs))
        if _loop_running():
            raise RuntimeError(
                f"{func.__qualname__} is a coroutine function called synchronously on the "
                "event loop's thread, outside an async view's request; await it instead"
            )
        return asgiref_async_to_sync(func)(*args, **kwargs)

    run.__wrapped__ = func  # type: ignore[attr-defined]
    return run


def _await(awaitable: Awaitable[T]) -> T:
    """Suspend the current request greenlet until the task has awaited ``awaitable``."""
    return getcurrent().parent.switch(awaitable)


def _await_send(send: Callable[[Message], Awaitable[None]], message: Message) -> None:
    _await(send(message))


async def _run_in_greenlet(fn: Callable[..., T], *args: Any) -> T:
    """Call ``fn`` in a request greenlet, awaiting for it whatever it hands over."""
    task = getcurrent()
    child = _RequestGreenlet(fn, task)
    # A new greenlet starts with an empty context: share the task's, so that
    # what Flask sets before an await is there after it, on both sides.
    child.gr_context = task.gr_context
    result = child.switch(*args)
    while not child.dead:
        try:
            value = await result
        except BaseException as exc:
            # Into the greenlet, where Flask handles it as raised by the await.
            result = child.throw(exc)
        else:
            result = child.switch(value)
    return result


def _send_from_thread(send: Callable[[Message], Awaitable[None]], message: Message) -> None:
    AsyncToSync(send)(message)


def _in_thread(
    loop: asyncio.AbstractEventLoop, wsgi_app: Any, instance: WsgiToAsgiInstance, environ: Environ
) -> tuple[Message, bytes] | None:
    # asgiref's AsyncToSync looks for the loop to run async code on in these two
    # attributes of SyncToAsync.threadlocal (read from asgiref 3.8 to 3.13; the
    # private part of asgiref used here). Without them a sync view's async
    # call would start a new loop, and tests/test_views.py's check fails.
    SyncToAsync.threadlocal.main_event_loop = loop
    SyncToAsync.threadlocal.main_event_loop_pid = os.getpid()
    return _respond(wsgi_app, instance, environ)


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _send_whole(send: Any, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"text/plain")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _respond(
    wsgi_app: Any, instance: WsgiToAsgiInstance, environ: Environ
) -> tuple[Message, bytes] | None:
    """Run the WSGI app (in a worker thread or a request greenlet).

    A response with a Content-Length of at most ``BUFFER_LIMIT`` is returned
    whole, for the loop to send.  Anything else streams through
    ``instance.sync_send``.  Unlike asgiref, the iterable is closed, as WSGI
    requires.
    """
    result = wsgi_app(environ, instance.start_response)
    try:
        chunks: list[bytes] = []
        size = 0
        iterator = iter(result)
        for chunk in iterator:
            chunks.append(chunk)
            size += len(chunk)
            length = instance.response_content_length
            if length is None or size > BUFFER_LIMIT:
                _stream(instance, chunks, iterator)
                return None
        length = instance.response_content_length
        content = b"".join(chunks)
        return instance.response_start, content if length is None else content[:length]
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()


def _stream(instance: WsgiToAsgiInstance, first: list[bytes], rest: Any) -> None:
    instance.response_started = True
    instance.sync_send(instance.response_start)
    sent = 0
    length = instance.response_content_length
    for chunk in itertools.chain(first, rest):
        if length is not None:
            chunk = chunk[: length - sent]
        instance.sync_send({"type": "http.response.body", "body": chunk, "more_body": True})
        sent += len(chunk)
        if length is not None and sent >= length:
            break
    instance.sync_send({"type": "http.response.body"})
