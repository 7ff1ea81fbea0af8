"""Shared fixtures: fresh apps on temp SQLite files, a lifespan driver, real Hypercorn
processes, and per-test PostgreSQL schemas.

Tests marked ``postgres`` or ``browser`` skip on a developer machine without
those services, and FAIL under ``CI=true``: CI must run them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from flask import Flask

from asyncapp import create_app
from asyncapp.asgi import to_asgi
from asyncapp.faces.api import BLUEPRINT
from asyncapp.runtime import Runtime

REPO = Path(__file__).resolve().parent.parent
TOKEN = "test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PG_ADMIN_URL = "postgresql://127.0.0.1:5432/test"
IN_CI = os.environ.get("CI", "").lower() == "true"


def need(service: str, reason: str) -> None:
    """Skip locally, fail in CI: tests of real services are mandatory there."""
    if IN_CI:
        pytest.fail(f"{service} is required in CI: {reason}")
    pytest.skip(f"{service} not available: {reason}")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("ASYNCAPP_"):
            monkeypatch.delenv(name)


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'jobs.db'}"


def app_config(db_url: str, **settings: Any) -> dict[str, Any]:
    """Flask config for a test app: ``settings`` are asyncapp setting names."""
    config: dict[str, Any] = {
        "ASYNCAPP_DATABASE_URL": db_url,
        "ASYNCAPP_JOB_MODULES": "tests.jobs",
        "ASYNCAPP_API_TOKEN": TOKEN,
        "ASYNCAPP_SYNC_INTERVAL": 0.1,
        "ASYNCAPP_SHUTDOWN_GRACE": 2,
    }
    config.update({f"ASYNCAPP_{name.upper()}": value for name, value in settings.items()})
    return config


@pytest.fixture
def make_app(db_url: str) -> Callable[..., Flask]:
    """``make_app(shutdown_grace=1, ...)``: a fresh app on this test's SQLite file."""

    def factory(**settings: Any) -> Flask:
        return create_app(app_config(settings.pop("database_url", db_url), **settings))

    return factory


class StartupFailed(Exception):
    pass


@contextlib.asynccontextmanager
async def lifespan(asgi_app: Any) -> AsyncIterator[Any]:
    """Drive ASGI lifespan startup and shutdown explicitly (httpx does not)."""
    to_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    from_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": {}}
    task = asyncio.create_task(asgi_app(scope, to_app.get, from_app.put))

    async def exchange(message: str) -> dict[str, Any]:
        await to_app.put({"type": message})
        reply = asyncio.create_task(from_app.get())
        done, _ = await asyncio.wait({reply, task}, return_when=asyncio.FIRST_COMPLETED)
        if reply not in done:
            reply.cancel()
            task.result()
            raise AssertionError(f"lifespan ended without answering {message}")
        return reply.result()

    started = await exchange("lifespan.startup")
    if started["type"] == "lifespan.startup.failed":
        await task
        raise StartupFailed(started["message"])
    assert started["type"] == "lifespan.startup.complete"
    try:
        yield asgi_app
    finally:
        stopped = await exchange("lifespan.shutdown")
        await task
        assert stopped["type"] == "lifespan.shutdown.complete", stopped


@contextlib.asynccontextmanager
async def serve(flask_app: Flask) -> AsyncIterator[httpx.AsyncClient]:
    """Start ``flask_app`` through asyncapp's ASGI app and yield a client for it."""
    asgi_app = to_asgi(flask_app)
    async with lifespan(asgi_app):
        transport = httpx.ASGITransport(app=asgi_app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


async def settled(runtime: Runtime) -> None:
    """Every run in progress in ``runtime`` ended and its result is written."""
    assert await runtime.dispatcher.drain(30) == 0
    assert await runtime.recorder.flush(10)


@pytest.fixture
async def served(
    make_app: Callable[..., Flask],
) -> AsyncIterator[tuple[httpx.AsyncClient, Runtime]]:
    """A started default test app (ASGI, in process), a client sending the token, its runtime."""
    from tests import jobs

    jobs.reset()
    app = make_app()
    async with serve(app) as client:
        client.headers.update(AUTH)
        yield client, app.extensions["asyncapp"].runtime


@pytest.fixture
async def asgi_client(make_app: Callable[..., Flask]) -> AsyncIterator[httpx.AsyncClient]:
    """A client of a started default test app (ASGI, in process)."""
    async with serve(make_app()) as client:
        yield client


@contextlib.asynccontextmanager
async def loopback_site(routes: dict[str, Any]) -> AsyncIterator[str]:
    """A real aiohttp server on 127.0.0.1 serving ``{path: handler}``; yields its base URL."""
    from aiohttp import web

    app = web.Application()
    for path, handler in routes.items():
        app.router.add_get(path, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


IMPLIED = frozenset({"HEAD", "OPTIONS"})


def served_api_routes(app: Flask) -> list[tuple[str, str]]:
    """``(METHOD, path)`` of every route ``app`` serves for the management API, sorted.

    A route is the API's if its endpoint is in the API's blueprint or its path is
    under the prefix.  Paths are written as OpenAPI writes them (``{job_id}``);
    HEAD and OPTIONS, which Flask adds to routes by itself, are left out.
    """
    prefix = app.extensions["asyncapp"].settings.api_prefix
    routes = []
    for rule in app.url_map.iter_rules():
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        under = path == prefix or path.startswith(f"{prefix}/")
        if rule.endpoint.startswith(f"{BLUEPRINT}.") or under:
            routes.extend((method, path) for method in rule.methods or () if method not in IMPLIED)
    return sorted(routes)


def documented_routes(document: dict[str, Any]) -> list[tuple[str, str]]:
    """``(METHOD, path)`` of every operation of an OpenAPI document, sorted."""
    return sorted(
        (method.upper(), path) for path, item in document["paths"].items() for method in item
    )


# -- real Hypercorn processes ---------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """A Hypercorn process serving an asyncapp app; ``url`` is its base URL."""

    process: subprocess.Popen[str]
    url: str
    lines: list[str] = field(default_factory=list)
    _queue: queue.Queue[str | None] = field(default_factory=queue.Queue)
    #: Set once the process closed its output: every line is in ``lines``.
    ended: threading.Event = field(default_factory=threading.Event)

    def wait_for(self, text: str, timeout: float = 30) -> str:
        """Block until the server prints a line containing ``text``."""
        for line in self.lines:
            if text in line:
                return line
        while True:
            try:
                line = self._queue.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(
                    f"server did not print {text!r}; output:\n" + "".join(self.lines)
                ) from None
            if line is None:
                raise AssertionError(
                    f"server exited before printing {text!r}:\n" + "".join(self.lines)
                )
            if text in line:
                return line

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, then the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise

    def output(self) -> str:
        return "".join(self.lines)

    def exited(self, timeout: float = 30) -> tuple[int, str]:
        """Wait for the process to end by itself; its exit code and all its output."""
        code = self.process.wait(timeout=timeout)
        assert self.ended.wait(timeout=10), "the server's output did not reach its end"
        return code, self.output()


def start_server(
    env: dict[str, str],
    app: str = "asyncapp.asgi:app",
    port: int | None = None,
    workers: int = 0,
    cwd: Path = REPO,
    python: str = sys.executable,
) -> Server:
    """Start Hypercorn (of ``python``'s environment) serving ``app`` from ``cwd``."""
    port = port or free_port()
    full_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("ASYNCAPP_")},
        "PYTHONPATH": str(REPO),
        "PYTHONUNBUFFERED": "1",
        **env,
    }
    process = subprocess.Popen(
        [
            python,
            "-m",
            "hypercorn",
            "-c",
            "hypercorn.toml",
            app,
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            str(workers),
        ],
        cwd=cwd,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    server = Server(process, f"http://127.0.0.1:{port}")

    def pump() -> None:
        assert process.stdout is not None
        with process.stdout:
            for line in process.stdout:
                server.lines.append(line)
                server._queue.put(line)
        server.ended.set()
        server._queue.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return server


@pytest.fixture
def hypercorn_server(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """``hypercorn_server(ASYNCAPP_X="...", app="module:app")``: a started real server.

    Defaults: this test's SQLite file, ``tests.jobs`` as job module, the test
    token.  Returns once Hypercorn says it is running.  Stopped at teardown.
    """
    servers: list[Server] = []

    def start(
        app: str = "asyncapp.asgi:app", wait: bool = True, workers: int = 0, **env: str
    ) -> Server:
        defaults = {
            "ASYNCAPP_DATABASE_URL": f"sqlite:///{tmp_path / 'server.db'}",
            "ASYNCAPP_JOB_MODULES": "tests.jobs",
            "ASYNCAPP_API_TOKEN": TOKEN,
        }
        server = start_server({**defaults, **env}, app=app, workers=workers)
        servers.append(server)
        if wait:
            server.wait_for("Running on http://")
        return server

    yield start
    for server in servers:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait()


# -- PostgreSQL ----------------------------------------------------------------


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A SQLAlchemy URL on a fresh schema of the local ``test`` database."""
    try:
        import psycopg

        admin = psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3)
    except Exception as exc:
        need("PostgreSQL at 127.0.0.1:5432", str(exc))
        raise
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin.execute(f'CREATE SCHEMA "{schema}"')
    try:
        # The schema names the connections too, so that teardown can end those of
        # servers still running (a server fixture set up before this one is stopped
        # after it): a DROP racing their transactions can deadlock.
        yield (
            f"postgresql+psycopg://127.0.0.1:5432/test?options=-csearch_path%3D{schema}"
            f"&application_name={schema}"
        )
    finally:
        for attempt in range(5):
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = %s",
                [schema],
            )
            try:
                admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
                break
            except psycopg.errors.DeadlockDetected:
                if attempt == 4:
                    raise
        admin.close()


@dataclass
class Cluster:
    """A throwaway PostgreSQL server of this test's own, that the test may stop and start."""

    bindir: Path
    data: Path
    port: int

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _ctl(self, *args: str) -> None:
        subprocess.run(
            [
                "runuser",
                "-u",
                "postgres",
                "--",
                str(self.bindir / "pg_ctl"),
                "-D",
                str(self.data),
                *args,
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )

    def start(self) -> None:
        options = f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._ctl("-o", options, "-l", str(self.data / "log"), "-w", "start")

    def stop(self) -> None:
        """Stop at once, as a crash or a network cut would look to clients."""
        self._ctl("-m", "immediate", "-w", "stop")


@pytest.fixture
def pg_cluster() -> Iterator[Cluster]:
    """A PostgreSQL server started for this test only, on a free port (needs root)."""
    import glob
    import shutil
    import tempfile

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found or os.geteuid() != 0 or shutil.which("runuser") is None:
        need("a throwaway PostgreSQL server", "needs root, runuser and PostgreSQL's initdb")
    bindir = Path(found[-1]).parent
    data = Path(tempfile.mkdtemp(prefix="asyncapp-pg-"))
    shutil.chown(data, "postgres", "postgres")
    subprocess.run(
        ["runuser", "-u", "postgres", "--", str(bindir / "initdb"), "-D", str(data),
         "-A", "trust", "-U", "postgres", "--no-sync"],
        check=True,
        capture_output=True,
        timeout=120,
    )  # fmt: skip
    cluster = Cluster(bindir, data, free_port())
    cluster.start()
    try:
        yield cluster
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            cluster.stop()
        shutil.rmtree(data, ignore_errors=True)


def wait_until(check: Callable[[], Any], timeout: float = 20, what: str = "") -> Any:
    """Poll ``check`` until it returns something truthy; for state in other processes.

    Another process's database rows and files have no event to await, so this
    polls them every 50 ms; it fails with ``what`` when ``timeout`` passes.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or check}")
        time.sleep(0.05)
