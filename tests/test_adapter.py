"""The concurrent WSGI adapter: request bodies, limits, and where code runs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any

import httpx
import pytest
from flask import Flask, g, request
from flask.views import View

from asyncapp import AsyncApp
from asyncapp.asgi import to_asgi
from asyncapp.web import adapter as adapter_module
from asyncapp.web.adapter import async_to_sync
from tests.conftest import app_config, lifespan, serve


def add_echo(app: Flask) -> None:
    @app.post("/echo")
    def echo() -> object:
        return {"length": len(request.get_data())}


async def test_body_under_the_limit_reaches_flask(make_app: Callable[..., Flask]) -> None:
    app = make_app(max_body_bytes=1000)
    add_echo(app)
    async with serve(app) as client:
        response = await client.post("/echo", content=b"x" * 1000)
    assert response.status_code == 200
    assert response.json() == {"length": 1000}


async def test_declared_body_over_the_limit_is_413(make_app: Callable[..., Flask]) -> None:
    app = make_app(max_body_bytes=1000)
    add_echo(app)
    async with serve(app) as client:
        response = await client.post("/echo", content=b"x" * 1001)
    assert response.status_code == 413
    assert "1000 bytes" in response.json()["error_message"]


async def test_streamed_body_over_the_limit_is_413(make_app: Callable[..., Flask]) -> None:
    app = make_app(max_body_bytes=1000)
    add_echo(app)

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(5):
            yield b"x" * 300

    async with serve(app) as client:
        response = await client.post("/echo", content=chunks())
    assert response.status_code == 413


async def test_flask_errors_pass_through(make_app: Callable[..., Flask]) -> None:
    async with serve(make_app()) as client:
        response = await client.get("/no/such/page")
    assert response.status_code == 404


def on_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


async def test_cancelled_async_view_tears_down_once(make_app: Callable[..., Flask]) -> None:
    app = make_app()
    entered = asyncio.Event()
    torn_down: list[str] = []

    @app.get("/hang")
    async def hang() -> object:
        entered.set()
        await asyncio.Event().wait()
        return "never"

    @app.teardown_request
    def teardown(exc: BaseException | None) -> None:
        if request.path == "/hang":
            torn_down.append(type(exc).__name__)

    async with serve(app) as client:
        request_task = asyncio.create_task(client.get("/hang"))
        await entered.wait()
        request_task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request_task
        assert (await client.get("/healthz")).status_code == 200
    assert torn_down == ["CancelledError"]


async def test_class_view_with_async_dispatch_runs_on_the_loop(
    make_app: Callable[..., Flask],
) -> None:
    app = make_app()

    class Where(View):
        async def dispatch_request(self) -> object:
            await asyncio.sleep(0)
            return {"hook_on_loop": g.hook_on_loop}

    app.before_request(lambda: setattr(g, "hook_on_loop", on_loop()))
    app.add_url_rule("/where", view_func=Where.as_view("where"))
    async with serve(app) as client:
        response = await client.get("/where")
    assert response.json() == {"hook_on_loop": True}


async def test_app_overriding_async_to_sync_keeps_its_override(
    db_url: str,
) -> None:
    calls: list[str] = []

    class OwnAsync(Flask):
        def async_to_sync(
            self, func: Callable[..., Coroutine[Any, Any, Any]]
        ) -> Callable[..., Any]:
            calls.append(func.__name__)
            return super().async_to_sync(func)

    app = OwnAsync("own", static_folder=None)
    app.config.update(app_config(db_url))
    AsyncApp(app)

    @app.get("/where")
    async def where() -> object:
        await asyncio.sleep(0)
        return {"view_on_loop": on_loop()}

    @app.after_request
    def after(response: Any) -> Any:
        response.headers["x-after-on-loop"] = str(on_loop())
        return response

    async with serve(app) as client:
        response = await client.get("/where")
    assert calls == ["where"]
    # Served from the pool: the coroutine runs on the loop, Flask around it in a thread.
    assert response.json() == {"view_on_loop": True}
    assert response.headers["x-after-on-loop"] == "False"


def test_async_to_sync_without_a_loop_runs_the_coroutine() -> None:
    async def double(x: int) -> int:
        await asyncio.sleep(0)
        return 2 * x

    assert async_to_sync(double)(21) == 42


async def test_too_many_duplicate_headers_is_400(make_app: Callable[..., Flask]) -> None:
    async with serve(make_app()) as client:
        response = await client.get("/healthz", headers=[("x-dup", "1")] * 101)
    assert response.status_code == 400


async def test_loop_or_pool_is_decided_once_per_endpoint_and_method(
    make_app: Callable[..., Flask], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(adapter_module, "PATH_CACHE_SIZE", 3)
    app = make_app()

    @app.get("/items/<int:n>")
    async def item(n: int) -> object:
        await asyncio.sleep(0)
        return {"n": n, "on_loop": on_loop()}

    @app.get("/plain/<int:n>")
    def plain(n: int) -> object:
        return {"n": n, "on_loop": on_loop()}

    asgi_app = to_asgi(app)
    adapter = asgi_app.adapter
    transport = httpx.ASGITransport(app=asgi_app)
    async with (
        lifespan(asgi_app),
        httpx.AsyncClient(transport=transport, base_url="http://test") as client,
    ):
        before = adapter.decisions
        paths = [f"/{kind}/{n}" for _ in range(2) for kind in ("items", "plain") for n in range(5)]
        replies = [(await client.get(path)).json() for path in paths]
        decided = adapter.decisions - before
    assert decided == 2  # one per endpoint, whatever the path and however often
    assert [r["on_loop"] for r in replies] == [True] * 5 + [False] * 5 + [True] * 5 + [False] * 5
    assert len(adapter._async_paths) <= 3  # the per-path answers stay bounded


async def test_sync_view_streams_from_its_worker_thread(make_app: Callable[..., Flask]) -> None:
    app = make_app()

    @app.get("/lines")
    def lines() -> object:
        def generate() -> Iterator[str]:
            yield "first\n"
            yield f"second on_loop={on_loop()}\n"

        return app.response_class(generate(), mimetype="text/plain")

    async with serve(app) as client:
        response = await client.get("/lines")
    assert "content-length" not in response.headers  # streamed, not buffered
    assert response.text == "first\nsecond on_loop=False\n"
