"""Lifespan start and stop through the ASGI interface."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from flask import Flask

from asyncapp import NotRunning
from asyncapp.asgi import to_asgi
from tests.conftest import AUTH, StartupFailed, lifespan, serve


async def test_startup_starts_the_scheduler_and_shutdown_stops_it(
    make_app: Callable[..., Flask],
) -> None:
    app = make_app()
    ext = app.extensions["asyncapp"]
    assert not ext.runtime.started, "nothing starts before lifespan startup"
    async with serve(app) as client:
        health = (await client.get("/healthz")).json()
        assert health["status"] == "ok"
        assert health["scheduler"]["state"] == "running"
        assert (await client.get("/readyz")).status_code == 200
        shared = ext.runtime.http
    assert not ext.runtime.started
    assert shared.is_closed, "the shared client is closed at shutdown"
    with pytest.raises(NotRunning):
        ext.service()


async def test_startup_failure_is_reported_with_a_one_line_reason(
    make_app: Callable[..., Flask],
) -> None:
    # Nothing listens on port 9: the database cannot be opened.
    app = make_app(database_url="postgresql+psycopg://127.0.0.1:9/nothing?connect_timeout=2")
    with pytest.raises(StartupFailed) as failure:
        async with lifespan(to_asgi(app)):
            pass
    message = str(failure.value)
    assert message.startswith("cannot open the database: OperationalError")
    assert "\n" not in message and "Traceback" not in message
    assert not app.extensions["asyncapp"].runtime.started


async def test_readyz_is_503_when_the_scheduler_is_shut_down(
    make_app: Callable[..., Flask],
) -> None:
    app = make_app()
    async with serve(app) as client:
        assert (await client.post("/scheduler/shutdown", headers=AUTH)).status_code == 204
        response = await client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["problems"] == ["the scheduler is stopped"]


def test_importing_the_default_app_starts_nothing() -> None:
    import asyncapp.asgi

    assert not asyncapp.asgi.app.ext.runtime.started
