"""WSGI-to-ASGI bridge on asgiref, serving requests concurrently.

asgiref's ``WsgiToAsgi`` runs every request through ``sync_to_async`` with
``thread_sensitive=True``: all of Flask on ONE thread, so 20 requests to a view
awaiting 100 ms took 2.09 s (DESIGN.md Fact 1).  Here each request runs in a
bounded pool of our own (``ASYNCAPP_WORKER_THREADS``), while asgiref still
does what it does well: building the environ, sending the response from the
thread, and running Flask's ``async def`` views back on the server loop (its
AsyncToSync finds the loop of the SyncToAsync that started the thread), so
async views share the loop with the scheduler and the shared HTTP client.

Bodies larger than ``max_body_bytes`` are refused with 413 before Flask sees
them, by ``Content-Length`` when given and while reading otherwise.
"""

from __future__ import annotations

import itertools
import json
from concurrent.futures import ThreadPoolExecutor
from tempfile import SpooledTemporaryFile
from typing import Any

from asgiref.sync import AsyncToSync, SyncToAsync
from asgiref.wsgi import WsgiToAsgiInstance

Scope = dict[str, Any]
Message = dict[str, Any]

#: Responses with a Content-Length up to this size are built in the worker
#: thread and sent from the loop in one go; others stream from the thread.
BUFFER_LIMIT = 1 << 20


class ConcurrentWsgiToAsgi:
    """An ASGI app (HTTP scopes only) serving a WSGI app from a thread pool."""

    def __init__(self, wsgi_app: Any, *, threads: int, max_body_bytes: int) -> None:
        self.wsgi_app = wsgi_app
        self.max_body_bytes = max_body_bytes
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="asyncapp-http")
        # SyncToAsync (not run_in_executor) so that asgiref's AsyncToSync, which
        # Flask uses for async views, finds this loop from the worker thread.
        self._call = SyncToAsync(_respond, thread_sensitive=False, executor=self.executor)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise ValueError(f"ConcurrentWsgiToAsgi cannot serve {scope['type']!r} scopes")
        declared = _content_length(scope)
        if declared is not None and declared > self.max_body_bytes:
            await self._too_large(send)
            return
        instance = WsgiToAsgiInstance(self.wsgi_app)
        instance.scope = scope
        with SpooledTemporaryFile(max_size=65536) as body:
            size = 0
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > self.max_body_bytes:
                    await self._too_large(send)
                    return
                body.write(chunk)
                if not message.get("more_body"):
                    break
            body.seek(0)
            instance.sync_send = AsyncToSync(send)
            buffered = await self._call(self.wsgi_app, instance, body)
        if buffered is not None:
            start, content = buffered
            await send(start)
            await send({"type": "http.response.body", "body": content})

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)

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


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _respond(
    wsgi_app: Any, instance: WsgiToAsgiInstance, body: Any
) -> tuple[Message, bytes] | None:
    """Run the WSGI app in a worker thread.

    A response with a Content-Length of at most ``BUFFER_LIMIT`` is returned
    whole, for the loop to send: one thread hop per request instead of one per
    ASGI message (asgiref sends each message with AsyncToSync, which costs
    more than Flask's own work for a small response).  Anything else streams
    from this thread as asgiref does.  Unlike asgiref, the iterable is closed,
    as WSGI requires.
    """
    try:
        environ = instance.build_environ(instance.scope, body)
    except ValueError:
        return (
            {
                "type": "http.response.start",
                "status": 400,
                "headers": [(b"content-type", b"text/plain")],
            },
            b"Bad Request: Too many duplicate headers",
        )
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
