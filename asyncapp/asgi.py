"""The ASGI application Hypercorn serves: lifespan plus the concurrent adapter.

``asyncapp.asgi:app`` is ``to_asgi(create_app())``.  asgiref's ``WsgiToAsgi``
raises on the ``lifespan`` scope, after which Hypercorn runs without startup
and shutdown (DESIGN.md Fact 2); this wrapper answers lifespan itself and
starts and stops the app's runtime on Hypercorn's loop.

Settings are read when the module is imported, but nothing starts until
lifespan startup.  A bad setting does not crash the import with a traceback:
the app then fails lifespan startup with the one-line reason, and Hypercorn
exits non-zero.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask

from . import http
from .adapter import FlaskToAsgi
from .app import AsyncApp, create_app
from .errors import DatabaseUnavailable, SettingsError
from .watchdog import serving

log = logging.getLogger("asyncapp.asgi")


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
            runtime = self.ext.runtime
            with serving(scope.get("method", "?"), scope.get("path", "?")):
                if runtime.started:
                    with http.bind(runtime.http):
                        await self.adapter(scope, receive, send)
                else:
                    await self.adapter(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        else:
            # Flask has no websockets; close them politely instead of raising.
            await send({"type": "websocket.close", "code": 1003})

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.ext.start()
                except Exception as exc:
                    log.error(
                        "startup failed: %s",
                        _one_line(exc),
                        exc_info=not isinstance(exc, SettingsError | DatabaseUnavailable),
                    )
                    await send({"type": "lifespan.startup.failed", "message": _one_line(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                try:
                    await self.ext.stop()
                except Exception as exc:
                    log.error("shutdown failed: %s", _one_line(exc), exc_info=True)
                    await send({"type": "lifespan.shutdown.failed", "message": _one_line(exc)})
                    return
                finally:
                    self.adapter.close()
                await send({"type": "lifespan.shutdown.complete"})
                return


class FailedApp:
    """Stands in for an app whose settings are invalid: fails lifespan startup."""

    def __init__(self, error: SettingsError) -> None:
        self.error = error

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            raise RuntimeError(str(self.error))
        await receive()
        await send({"type": "lifespan.startup.failed", "message": str(self.error)})


def to_asgi(flask_app: Flask) -> AsgiApp:
    """Wrap a Flask app into the ASGI app to serve; attaches asyncapp if not attached yet.

    :raises SettingsError: if asyncapp's settings are invalid.
    """
    ext = flask_app.extensions.get("asyncapp")
    if ext is None:
        ext = AsyncApp(flask_app)
    return AsgiApp(flask_app, ext)


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, SettingsError):
        return str(exc)
    if isinstance(exc, DatabaseUnavailable):
        return f"cannot open the database: {exc.detail}"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def _default_app() -> AsgiApp | FailedApp:
    try:
        return to_asgi(create_app())
    except SettingsError as exc:
        return FailedApp(exc)


app = _default_app()
