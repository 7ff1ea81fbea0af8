"""An app with a slow async view, served by a real Hypercorn in the concurrency test."""

from __future__ import annotations

import asyncio

from flask import jsonify

from asyncapp import create_app
from asyncapp.asgi import to_asgi

flask_app = create_app()
in_flight = 0
peak = 0


@flask_app.get("/slow")
async def slow() -> object:
    """Awaits 200 ms on the loop, counting how many are in flight at once."""
    global in_flight, peak
    in_flight += 1
    peak = max(peak, in_flight)
    try:
        await asyncio.sleep(0.2)
    finally:
        in_flight -= 1
    return jsonify(ok=True)


@flask_app.get("/peak")
async def get_peak() -> object:
    return jsonify(peak=peak)


app = to_asgi(flask_app)
