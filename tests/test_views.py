"""Flask views through a real Hypercorn: async views hold no thread while they await,
and Flask's semantics hold on both paths (``tests/views_app.py``)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable

import httpx
import pytest

from tests.conftest import Server

ASYNC_HOOKS = ["before", "after", "teardown:None"]


@pytest.fixture
def server(hypercorn_server: Callable[..., Server]) -> Server:
    return hypercorn_server(app="tests.views_app:app", ASYNCAPP_MAX_BODY_BYTES="1000")


@pytest.fixture
async def client(server: Server) -> AsyncIterator[httpx.AsyncClient]:
    limits = httpx.Limits(max_connections=250)
    async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=30) as client:
        yield client


def new_tag() -> str:
    return uuid.uuid4().hex


async def test_async_views_in_flight_hold_no_thread(client: httpx.AsyncClient) -> None:
    before = (await client.get("/threads")).json()["threads"]
    requests = [asyncio.create_task(client.get("/wait")) for _ in range(200)]
    try:
        during = (await client.get("/arrived", params={"n": 200})).json()
    finally:
        await client.post("/release")
        responses = await asyncio.gather(*requests)
    print(f"threads: {before} before, {during['threads']} with {during['waiting']} in flight")
    assert during["waiting"] == 200
    # A thread per request would add 128 (the pool's size) here.
    assert during["threads"] <= before + 4
    assert [r.status_code for r in responses] == [200] * 200


async def test_request_g_session_and_current_app_survive_awaits(
    client: httpx.AsyncClient,
) -> None:
    tag = new_tag()
    first = (await client.get("/context", params={"tag": tag})).json()
    second = (await client.get("/context", params={"tag": tag})).json()
    assert first == {
        "tag": tag,
        "g_tag": tag,
        "app": "asyncapp",
        "same_app": True,
        "visits": 1,
        "upstream": 200,  # the shared client, from http_client()
        "hook_on_loop": True,
    }
    assert second["visits"] == 2  # the session cookie written after the awaits


async def test_hooks_run_once_per_request(client: httpx.AsyncClient) -> None:
    tags = [new_tag() for _ in range(20)]
    responses = await asyncio.gather(*(client.get("/context", params={"tag": t}) for t in tags))
    assert all(r.json()["hook_on_loop"] for r in responses)
    for tag in tags:
        assert (await client.get("/hooks", params={"of": tag})).json() == ASYNC_HOOKS


async def test_error_raised_after_an_await_reaches_its_handler(
    client: httpx.AsyncClient,
) -> None:
    tag = new_tag()
    response = await client.get("/teapot", params={"tag": tag})
    assert response.status_code == 418
    assert response.json() == {"error": tag, "tag": tag, "on_loop": True}
    hooks = (await client.get("/hooks", params={"of": tag})).json()
    # Handled errors do not reach teardown, as in any Flask server.
    assert hooks == ASYNC_HOOKS


async def test_async_error_handler_awaits(client: httpx.AsyncClient) -> None:
    tag = new_tag()
    response = await client.get("/async-handled", params={"tag": tag})
    assert response.status_code == 409
    assert response.json() == {"error": tag, "tag": tag, "hook_on_loop": True}


async def test_stream_with_context_streams_from_an_async_view(
    client: httpx.AsyncClient,
) -> None:
    tag = new_tag()
    async with client.stream("GET", "/stream", params={"tag": tag}) as response:
        assert "content-length" not in response.headers
        lines = response.aiter_lines()
        # The first line arrives while the generator awaits the gate: it streams.
        assert await anext(lines) == f"first {tag}"
        await client.post("/stream/open", params={"gate": tag})
        assert [line async for line in lines] == [f"second {tag} on_loop=True"]
    hooks = (await client.get("/hooks", params={"of": tag})).json()
    assert (hooks.count("before"), hooks.count("after")) == (1, 1)
    # Flask 3.1 tears down when the view returns and again when the stream
    # ends (stream_with_context pushes the request context again), under any server.
    assert hooks[2:] == ["teardown:None", "teardown:None"]


async def test_copy_current_request_context_in_an_async_view(
    client: httpx.AsyncClient,
) -> None:
    tag = new_tag()
    await client.get("/context", params={"tag": new_tag()})  # a session with visits=1
    response = await client.get("/copied", params={"tag": tag})
    assert response.json() == {"tag": tag, "visits": 1, "on_loop": False, "hook_on_loop": True}


async def test_method_view_async_method_on_the_loop_sync_method_in_a_thread(
    client: httpx.AsyncClient,
) -> None:
    got = (await client.get("/items/a")).json()
    assert got == {"name": "a", "method": "get", "hook_on_loop": True}
    posted = (await client.post("/items/b")).json()
    assert posted == {"name": "b", "method": "post", "hook_on_loop": False, "on_loop": False}
    assert (await client.head("/items/a")).status_code == 200


async def test_sync_view_runs_in_a_worker_thread(client: httpx.AsyncClient) -> None:
    response = (await client.get("/sync")).json()
    assert response["on_loop"] is False
    assert response["hook_on_loop"] is False
    assert response["thread"].startswith("asyncapp-http")


async def test_sync_view_runs_async_code_on_the_server_loop(client: httpx.AsyncClient) -> None:
    from_sync = (await client.get("/sync-awaits")).json()
    assert from_sync["on_loop"] is False
    assert from_sync["loop"] == (await client.get("/loop")).json()["loop"]


async def test_body_over_the_limit_is_413_on_an_async_route(client: httpx.AsyncClient) -> None:
    within = await client.post("/upload", content=b"x" * 1000)
    assert within.json() == {"length": 1000, "hook_on_loop": True}

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(4):
            yield b"x" * 300

    declared = await client.post("/upload", content=b"x" * 1001)
    streamed = await client.post("/upload", content=chunks())
    assert (declared.status_code, streamed.status_code) == (413, 413)
    assert "1000 bytes" in declared.json()["error_message"]


async def test_sync_call_of_async_code_on_the_loop_is_refused(client: httpx.AsyncClient) -> None:
    response = await client.get("/blocking-call")
    assert response.status_code == 500
    assert "called synchronously on the event loop" in response.json()["error"]
