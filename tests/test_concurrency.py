"""Flask views are served concurrently by a real Hypercorn.

asgiref's ``WsgiToAsgi`` alone runs every request on one thread: 20 requests to a
view awaiting 100 ms took 2.09 s.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx

from tests.conftest import Server


async def test_async_views_are_served_concurrently(hypercorn_server: Callable[..., Server]) -> None:
    server = hypercorn_server(app="tests.serve_app:app")
    limits = httpx.Limits(max_connections=30)
    async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=20) as client:
        responses = await asyncio.gather(*(client.get("/slow") for _ in range(30)))
        assert [r.status_code for r in responses] == [200] * 30
        peak = (await client.get("/peak")).json()["peak"]
    print(f"async views in flight at once: {peak} of 30")
    # asgiref's stock adapter serialises them on one thread: peak would be 1.
    # Here each awaits in its own greenlet on the loop, holding no thread.
    assert peak >= 20
