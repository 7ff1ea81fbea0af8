"""The shared HTTP client: httpx's API over aiohttp, no cookies kept between jobs."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from asyncapp import http
from asyncapp.settings import load_settings
from tests.conftest import loopback_site


@pytest.fixture
async def upstream() -> AsyncIterator[str]:
    """A real HTTP server on loopback that sets a cookie and echoes the Cookie header."""

    async def set_cookie(request: web.Request) -> web.Response:
        response = web.Response(text="set")
        response.set_cookie("session", "job-a-secret")
        return response

    async def echo(request: web.Request) -> web.Response:
        return web.Response(text=request.headers.get("Cookie", ""))

    async with loopback_site({"/set": set_cookie, "/echo": echo}) as url:
        yield url


async def test_shared_client_keeps_no_cookies_between_requests(upstream: str) -> None:
    client = http.open_client(load_settings())
    try:
        assert (await client.get(f"{upstream}/set")).text == "set"
        assert (await client.get(f"{upstream}/echo")).text == ""
        sent = await client.get(f"{upstream}/echo", headers={"Cookie": "explicit=1"})
        assert sent.text == "explicit=1"
        with pytest.raises(TypeError, match="Cookie header"):
            client.cookies = {"a": "b"}  # type: ignore[assignment]
    finally:
        await http.close_client(client)
