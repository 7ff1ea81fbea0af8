"""The ASGI application Hypercorn serves: lifespan plus the concurrent adapter.

``asyncapp.asgi:app`` is ``to_asgi(create_app())``.  asgiref's ``WsgiToAsgi``
raises on the ``lifespan`` scope, and Hypercorn then serves without startup
and shutdown: the scheduler would never start.  This wrapper answers lifespan
itself and starts and stops the app's runtime on Hypercorn's loop.

Settings are read when the module is imported, but nothing starts until
lifespan startup.  A bad setting does not crash the import with a traceback:
the app then fails lifespan startup.

A failed startup (or shutdown) is one log line saying what to fix, and
Hypercorn exits with status 1.  Hypercorn 0.18 raises ``LifespanFailureError``
from the ``send`` of ``lifespan.startup.failed``, re-raises it from its worker
and lets it reach the interpreter, which would print it with every frame and
chained cause: about 50 lines for an unreachable database.  Unless
``ASYNCAPP_DEBUG`` is true, that exception is printed as nothing more than the
line already logged; with it, both tracebacks are printed.

Every HTTP response leaves through :class:`AsgiApp`, which adds
``X-Content-Type-Options: nosniff`` to it (Flask's answers, the adapter's 413,
error pages alike), so no browser guesses an HTML type for a JSON error.

It also writes the access log (``ASYNCAPP_ACCESS_LOG``), one line per request
on the ``asyncapp.access`` logger, so requests are logged in the same format
(text or JSON) as runs.  Hypercorn's own access log is off in the shipped
``hypercorn.toml``: for every request it copies the whole process environment
into the dict its format is filled from, whatever the format uses.  That copy
was a quarter of the event loop's work per request for a plain sync view
(py-spy, M4 of ``bench/``), more with the many variables a container gets;
this line costs one logging call.

In a worker of ``hypercorn -w N``, SIGTERM is asyncapp's to handle
(:func:`_follow_hypercorn_shutdown`).  Hypercorn 0.18 gives its workers no
handler of their own: they stop when the parent sets a shared event.  But the
parent, on its SIGTERM, sets that event, waits for the *first* worker to exit,
and then terminates the others, killing a worker still draining its runs (no
``stopped`` line, its process row left for the next start to reap, its runs
left ``running``); and a SIGTERM sent to the whole process group (systemd,
``kill -- -PGID``) killed every worker at once.  So a worker takes SIGTERM as
"stop gracefully": it passes the signal on to the parent if the parent has not
set its event yet, and is otherwise ignored, and the drain goes on.  The
parent's exit then waits for it (``multiprocessing`` joins its worker processes
at exit).

Per request this wrapper (response headers, the watchdog's note of which
request a task serves, the shared client bound, the access line) costs about
8.5 us of CPU without the access line, against 11 us when the watchdog note and
the binding were generator context managers and the note a weak reference
(a stub behind it, 20,000 requests in one process); the access line adds
about 10 us, most of it ``logging``'s ``LogRecord``.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import multiprocessing
import os
import re
import signal
import sys
import time
from types import TracebackType
from typing import Any
from urllib.parse import unquote_plus

from flask import Flask

from asyncapp import compat, http, logs
from asyncapp.app import AsyncApp, create_app
from asyncapp.errors import DatabaseUnavailable, SettingsError
from asyncapp.settings import debug_from_environment
from asyncapp.watchdog import requests as serving
from asyncapp.web.adapter import FlaskToAsgi

__all__ = ["AsgiApp", "app", "to_asgi"]

log = logging.getLogger("asyncapp.asgi")
access_log = logging.getLogger("asyncapp.access")

#: Headers added to every HTTP response that does not set them itself.
RESPONSE_HEADERS = ((b"x-content-type-options", b"nosniff"),)


class AsgiApp:
    """ASGI callable for a Flask app with asyncapp attached."""

    def __init__(self, flask_app: Flask, ext: AsyncApp) -> None:
        self.flask_app = flask_app
        self.ext = ext
        self.adapter = FlaskToAsgi(
            flask_app,
            threads=ext.settings.worker_threads,
            max_body_bytes=ext.settings.max_body_bytes,
        )

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            # The watchdog's note and the client binding as a try/finally: as
            # generator context managers they were a fifth of this wrapper's CPU.
            began = time.perf_counter()
            response = _Response(send)
            runtime = self.ext.runtime
            task = asyncio.current_task()
            serving[task] = f"{scope.get('method', '?')} {scope.get('path', '?')}"
            token = http.bound.set(runtime.http) if runtime.started else None
            try:
                await self.adapter(scope, receive, response)
            finally:
                if token is not None:
                    http.bound.reset(token)
                serving.pop(task, None)
                if self.ext.settings.access_log and access_log.isEnabledFor(logging.INFO):
                    _log_access(scope, response, time.perf_counter() - began)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        else:
            # Flask has no websockets; close them politely instead of raising.
            await send({"type": "websocket.close", "code": 1003})

    async def _lifespan(self, receive: Any, send: Any) -> None:
        debug = self.ext.settings.debug
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.ext.start()
                except Exception as exc:
                    await _failed(send, "startup", exc, debug)
                    return
                _freeze_startup_objects()
                _follow_hypercorn_shutdown()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                try:
                    await self.ext.stop()
                except Exception as exc:
                    await _failed(send, "shutdown", exc, debug)
                    return
                finally:
                    self.adapter.close()
                    _thaw()
                await send({"type": "lifespan.shutdown.complete"})
                return


#: Allocations between two young collections while the app runs (Python's default: 700).
GC_YOUNG_THRESHOLD = 10_000


def _freeze_startup_objects() -> None:
    """Leave what startup built out of the garbage collector's walks, and walk less often.

    The collector's full collections walk every tracked object: about 116,000
    once asyncapp has started, most of them imported modules' code and data
    that live as long as the process.  At 1000 requests in flight that walk
    cost 91-97 us of CPU per request of about 300 (``python -m bench.inproc``,
    ``gc.callbacks`` timing each collection); frozen (``gc.freeze``, which
    Python documents for this), 21-30 us.  What is frozen is never collected
    as a cycle, so the garbage there is now is collected first.

    Requests that call an upstream keep far more objects alive while in
    flight (connections, parsers, httpx's models), and every older-generation
    collection walks them: with 1000 in flight, 306 us of collection per
    request through ``http_client()`` and 255 through ``aiohttp_session()``.
    Young collections every ``GC_YOUNG_THRESHOLD`` allocations instead of 700
    made that 183 and 102 us (CPU per request 1110 -> 838 and 826 -> 517),
    for a few thousand more objects waiting to be collected.  An app that set
    its own threshold keeps it.  Lifespan shutdown undoes both.
    """
    gc.collect()
    gc.freeze()
    if gc.get_threshold()[0] == _PYTHON_YOUNG_THRESHOLD:
        gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


def _follow_hypercorn_shutdown() -> None:
    """In a worker of ``hypercorn -w N``: SIGTERM stops every worker gracefully, and one
    that is stopping already is not killed by it (see the module's docstring)."""
    event = compat.hypercorn_shutdown_event()
    if event is None:
        return

    parent = multiprocessing.parent_process()

    def on_sigterm() -> None:
        if event.is_set() or parent is None or parent.pid is None:
            log.info("SIGTERM while stopping: running jobs still get their grace period")
            return
        # Passed on to Hypercorn's parent, which stops every worker and then itself:
        # setting the event here would stop the workers, and the parent would start
        # new ones, in a loop.
        log.warning("SIGTERM: stopping every worker of this server gracefully")
        os.kill(parent.pid, signal.SIGTERM)

    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, on_sigterm)


def _thaw() -> None:
    gc.unfreeze()
    if gc.get_threshold()[0] == GC_YOUNG_THRESHOLD:
        gc.set_threshold(_PYTHON_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


_PYTHON_YOUNG_THRESHOLD = 700


class FailedApp:
    """Stands in for an app whose settings are invalid: fails lifespan startup."""

    def __init__(self, error: SettingsError) -> None:
        self.error = error
        self.debug = debug_from_environment()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            raise RuntimeError(str(self.error))
        await receive()
        # The settings that choose the log format are among those that failed.
        logs.configure("INFO", "text")
        await _failed(send, "startup", self.error, self.debug)


def to_asgi(flask_app: Flask) -> AsgiApp:
    """Wrap a Flask app into the ASGI app to serve; attaches asyncapp if not attached yet.

    :raises SettingsError: if asyncapp's settings are invalid.
    """
    ext = flask_app.extensions.get("asyncapp")
    if ext is None:
        ext = AsyncApp(flask_app)
    return AsgiApp(flask_app, ext)


async def _failed(send: Any, stage: str, exc: Exception, debug: bool) -> None:
    """Log why ``stage`` failed in one line, then tell the server.

    Logged as critical, so no ``ASYNCAPP_LOG_LEVEL`` hides why the process is ending.
    """
    reason = _one_line(exc, stage)
    expected = isinstance(exc, SettingsError | DatabaseUnavailable)
    hint = "" if expected or debug else " (ASYNCAPP_DEBUG=true prints the traceback)"
    log.critical("%s failed: %s%s", stage, reason, hint, exc_info=exc if debug else None)
    try:
        await send({"type": f"lifespan.{stage}.failed", "message": reason})
    except Exception as raised:
        if not debug:
            _print_nothing_more_for(raised)
        raise


def _print_nothing_more_for(error: BaseException) -> None:
    """Print nothing for ``error`` if it ends the interpreter: its reason is logged already.

    Only that exception object is affected; any other one is printed as before.
    """
    previous = sys.excepthook

    def hook(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
        if value is not error:
            previous(kind, value, tb)

    sys.excepthook = hook


class _Response:
    """The ``send`` of one HTTP request: adds ``RESPONSE_HEADERS``, notes status and size."""

    __slots__ = ("send", "size", "status")

    def __init__(self, send: Any) -> None:
        self.send = send
        self.status: int | None = None
        self.size = 0

    async def __call__(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            headers = list(message.get("headers", ()))
            for pair in RESPONSE_HEADERS:
                if not any(bytes(name).lower() == pair[0] for name, _ in headers):
                    headers.append(pair)
            message = {**message, "headers": headers}
            self.status = message["status"]
        elif message["type"] == "http.response.body":
            self.size += len(message.get("body", b""))
        await self.send(message)


#: A query parameter whose name says it holds a credential: its value is not logged.
_SECRET_PARAM = re.compile(r"token|key|pass|pwd|secret|auth|credential|signature|session", re.I)


def _log_access(scope: dict[str, Any], response: _Response, seconds: float) -> None:
    """``127.0.0.1:51234 "GET /healthz?x=1 1.1" 200 123 0.0021s``; status ``-``: no
    response was started (the client left, or the app failed before answering).

    The path and query are the client's: escaped onto one line (:func:`logs.escape`),
    and the values of credential-looking query parameters (``token``,
    ``api_key``, ``password``...) written as ``[redacted]``.
    """
    client = scope.get("client")
    query = scope.get("query_string", b"")
    target = scope.get("path", "") + ("?" + _redacted(query.decode("latin-1")) if query else "")
    access_log.info(
        '%s "%s %s %s" %s %d %.4fs',
        f"{client[0]}:{client[1]}" if client else "-",
        logs.escape(scope.get("method", "-")),
        logs.escape(target),
        scope.get("http_version", "-"),
        response.status if response.status is not None else "-",
        response.size,
        seconds,
    )


def _redacted(query: str) -> str:
    """``query`` with the value of each credential-looking parameter replaced."""
    if not _SECRET_PARAM.search(unquote_plus(query)):
        return query
    parts = query.split("&")
    for index, part in enumerate(parts):
        name, sep, value = part.partition("=")
        if sep and value and _SECRET_PARAM.search(unquote_plus(name)):
            parts[index] = f"{name}=[redacted]"
    return "&".join(parts)


def _one_line(exc: BaseException, stage: str) -> str:
    if isinstance(exc, SettingsError):
        return str(exc)
    if isinstance(exc, DatabaseUnavailable):
        if stage == "startup":
            return f"cannot open the database: {exc.detail}"
        return f"the database is unavailable: {exc.detail}"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def _default_app() -> AsgiApp | FailedApp:
    try:
        return to_asgi(create_app())
    except SettingsError as exc:
        return FailedApp(exc)


app = _default_app()
