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

import json
from concurrent.futures import ThreadPoolExecutor
from tempfile import SpooledTemporaryFile
from typing import Any

from asgiref.sync import AsyncToSync, SyncToAsync
from asgiref.wsgi import WsgiToAsgiInstance

Scope = dict[str, Any]
Message = dict[str, Any]

# The undecorated method: asgiref wraps it with a thread-sensitive sync_to_async.
_run_wsgi_app = WsgiToAsgiInstance.__dict__["run_wsgi_app"].func


class ConcurrentWsgiToAsgi:
    """An ASGI app (HTTP scopes only) serving a WSGI app from a thread pool."""

    def __init__(self, wsgi_app: Any, *, threads: int, max_body_bytes: int) -> None:
        self.wsgi_app = wsgi_app
        self.max_body_bytes = max_body_bytes
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="asyncapp-http")
        self._call = SyncToAsync(_run_wsgi_app, thread_sensitive=False, executor=self.executor)

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
            await self._call(instance, body)

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
