"""The concurrent WSGI adapter: request bodies, limits, and where code runs."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from flask import Flask, request

from tests.conftest import serve


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
