"""Lifespan start and stop through the ASGI interface, and how a failed start reads."""

from __future__ import annotations

import gc
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from flask import Flask

from asyncapp import NotRunning
from asyncapp.asgi import GC_YOUNG_THRESHOLD, to_asgi
from tests.conftest import AUTH, REPO, Server, StartupFailed, lifespan, serve


async def test_startup_objects_are_left_out_of_collections_until_shutdown(
    make_app: Callable[..., Flask],
) -> None:
    asgi_app = to_asgi(make_app())
    gc.unfreeze()
    assert gc.get_threshold()[0] == 700  # Python's default
    async with lifespan(asgi_app):
        frozen = gc.get_freeze_count()
        # The app, its runtime and the imported modules: more than a few objects.
        assert frozen > 10_000
        assert asgi_app.ext.runtime.started
        assert gc.get_threshold()[0] == GC_YOUNG_THRESHOLD
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold()[0] == 700


async def test_an_apps_own_collection_threshold_is_kept(
    make_app: Callable[..., Flask],
) -> None:
    before = gc.get_threshold()
    gc.set_threshold(1234)
    try:
        async with lifespan(to_asgi(make_app())):
            assert gc.get_threshold()[0] == 1234
    finally:
        gc.set_threshold(*before)


async def test_startup_starts_the_scheduler_and_shutdown_stops_it(
    make_app: Callable[..., Flask], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="asyncapp.runtime")
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
    said = [r.getMessage() for r in caplog.records if r.name == "asyncapp.runtime"]
    assert [m.split(" on ")[0] for m in said] == [
        "asyncapp started",
        "asyncapp stopping",
        "asyncapp stopped",
    ], said
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


# -- a failed start, as an operator sees it ---------------------------------------------

UNREACHABLE = "postgresql+psycopg://127.0.0.1:9/x"  # nothing listens on port 9


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("env", "line"),
    [
        (
            {"ASYNCAPP_TIMEZONE": "Mars/Olympus"},
            "CRITICAL asyncapp.asgi: startup failed: invalid settings: "
            "ASYNCAPP_TIMEZONE: unknown time zone 'Mars/Olympus'",
        ),
        (
            {"ASYNCAPP_DATABASE_URL": UNREACHABLE},
            "CRITICAL asyncapp.asgi: startup failed: cannot open the database: "
            'OperationalError: connection failed: connection to server at "127.0.0.1", '
            "port 9 failed: Connection refused",
        ),
    ],
    ids=["bad setting", "unreachable database"],
)
def test_real_hypercorn_startup_failure_is_one_line_and_exit_status_1(
    hypercorn_server: Callable[..., Server], env: dict[str, str], line: str
) -> None:
    server = hypercorn_server(wait=False, **env)

    code, output = server.exited()

    assert output.splitlines()[0].endswith(line), output
    assert len(output.splitlines()) == 1, output
    assert code == 1


@pytest.mark.timeout(60)
def test_asyncapp_debug_keeps_the_tracebacks(hypercorn_server: Callable[..., Server]) -> None:
    server = hypercorn_server(wait=False, ASYNCAPP_DEBUG="true", ASYNCAPP_DATABASE_URL=UNREACHABLE)

    code, output = server.exited()

    first, *rest = output.splitlines()
    assert first.endswith("startup failed: cannot open the database: OperationalError: "
                          'connection failed: connection to server at "127.0.0.1", port 9 '
                          "failed: Connection refused")  # fmt: skip
    # The cause, as logged, then Hypercorn's own exception reaching the interpreter.
    assert rest[0] == "Traceback (most recent call last):"
    assert "psycopg.OperationalError" in output
    assert rest[-1].startswith("hypercorn.utils.LifespanFailureError: Lifespan failure in startup")
    assert code == 1


async def test_an_unexpected_startup_error_is_one_line_pointing_at_asyncapp_debug(
    make_app: Callable[..., Flask], caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app()

    async def broken() -> None:
        raise RuntimeError("the flux capacitor\nis gone")

    app.extensions["asyncapp"].start = broken
    with pytest.raises(StartupFailed, match=r"^RuntimeError: the flux capacitor$"):
        async with lifespan(to_asgi(app)):
            pass

    [record] = [r for r in caplog.records if r.name == "asyncapp.asgi"]
    assert record.levelno == logging.CRITICAL and record.exc_info is None
    assert record.getMessage() == (
        "startup failed: RuntimeError: the flux capacitor "
        "(ASYNCAPP_DEBUG=true prints the traceback)"
    )


async def test_with_asyncapp_debug_the_startup_error_is_logged_with_its_traceback(
    make_app: Callable[..., Flask], caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app(debug=True)

    async def broken() -> None:
        raise RuntimeError("the flux capacitor")

    app.extensions["asyncapp"].start = broken
    with pytest.raises(StartupFailed):
        async with lifespan(to_asgi(app)):
            pass

    [record] = [r for r in caplog.records if r.name == "asyncapp.asgi"]
    assert record.getMessage() == "startup failed: RuntimeError: the flux capacitor"
    assert record.exc_info is not None and record.exc_info[0] is RuntimeError


async def test_a_shutdown_failure_is_one_line_too(
    make_app: Callable[..., Flask], caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app()
    ext = app.extensions["asyncapp"]
    stop = ext.stop

    async def stop_then_fail() -> None:
        await stop()
        raise RuntimeError("left something open")

    with pytest.raises(AssertionError, match=r"lifespan\.shutdown\.failed"):
        async with lifespan(to_asgi(app)):
            ext.stop = stop_then_fail

    [record] = [r for r in caplog.records if r.name == "asyncapp.asgi"]
    assert record.levelno == logging.CRITICAL and record.exc_info is None
    assert record.getMessage() == (
        "shutdown failed: RuntimeError: left something open "
        "(ASYNCAPP_DEBUG=true prints the traceback)"
    )


IMPORT_STARTS_NOTHING = """
import threading
from pathlib import Path

from asyncapp import NotRunning
import asyncapp.asgi

app = asyncapp.asgi.app
assert isinstance(app, asyncapp.asgi.AsgiApp), app  # valid settings: the real app
assert app.ext.settings.database_url.endswith("/instance/asyncapp.db")
assert not app.ext.runtime.started
try:
    app.ext.runtime.scheduler
except NotRunning:
    pass
else:
    raise AssertionError("a scheduler exists after the import")
assert threading.enumerate() == [threading.main_thread()], threading.enumerate()
assert list(Path().iterdir()) == [], list(Path().iterdir())  # no database file, no folder
print("nothing started")
"""


def test_importing_the_default_app_starts_nothing(tmp_path: Path) -> None:
    # In a fresh interpreter: this one imported asyncapp.asgi long ago.
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", IMPORT_STARTS_NOTHING],
        cwd=tmp_path,
        env={"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "nothing started\n"
    assert list(tmp_path.iterdir()) == []
