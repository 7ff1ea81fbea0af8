"""asyncapp stack: asyncapp as shipped plus the bench routes, through the public API.

Serve with ``hypercorn -c <cfg> bench.stacks.asyncapp_app:app`` and
``ASYNCAPP_JOB_MODULES=bench.stacks.asyncapp_jobs``; needs ``BENCH_UPSTREAM``.
Jobs are added through the app's job service (what the management API calls),
concurrently, so their database writes are batched as the API's would be under
concurrent callers.
"""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import jsonify, request

from asyncapp import create_app, http_client
from asyncapp.asgi import to_asgi
from asyncapp.model.change import Actor
from bench.stacks.lag import LagProbe

UPSTREAM = os.environ.get("BENCH_UPSTREAM", "http://127.0.0.1:1")
CALL = "bench.stacks.asyncapp_jobs:call"
IDLE = "bench.stacks.asyncapp_jobs:idle"
HOURLY_START = datetime(2100, 1, 1, tzinfo=UTC)

flask_app = create_app()
lag = LagProbe()


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=UTC).isoformat()


async def _add_all(specs: list[dict[str, Any]]) -> Any:
    """Add jobs through the job service, all at once; the response says how many."""
    service = flask_app.extensions["asyncapp"].service()
    actor = Actor("api", "bench")
    await asyncio.gather(*(service.add_job(spec, actor) for spec in specs))
    return jsonify(scheduled=len(specs))


@flask_app.get("/bench/sync")
def sync_view() -> str:
    return "ok"


@flask_app.get("/bench/async")
async def async_view() -> str:
    await http_client().get(f"{UPSTREAM}/delay?ms=100")
    return "ok"


@flask_app.post("/bench/oneshot")
async def oneshot() -> Any:
    q = request.args
    trigger = {"type": "date", "run_date": _iso(float(q["at"]))}
    return await _add_all([
        {"id": f"{q['tag']}-{j}", "func": CALL, "trigger": trigger,
         "args": [f"{UPSTREAM}/delay?ms={q['ms']}&tag={q['tag']}&job={j}"]}
        for j in range(int(q["n"]))
    ])  # fmt: skip


@flask_app.post("/bench/interval")
async def interval() -> Any:
    q = request.args
    n, start, runs = int(q["n"]), float(q["start"]), int(q["runs"])
    specs = []
    for j in range(n):
        first = start + j / n
        trigger = {"type": "interval", "seconds": 1, "start_date": _iso(first),
                   "end_date": _iso(first + runs - 0.5)}  # fmt: skip
        url = f"{UPSTREAM}/delay?ms={q['ms']}&tag={q['tag']}&job={j}"
        specs.append({"id": f"{q['tag']}-{j}", "func": CALL, "trigger": trigger, "args": [url]})
    return await _add_all(specs)


@flask_app.post("/bench/stored")
async def stored() -> Any:
    specs = []
    for j in range(int(request.args["n"])):
        start = (HOURLY_START + timedelta(seconds=j)).isoformat()
        trigger = {"type": "interval", "hours": 1, "start_date": start}
        specs.append({"id": f"stored-{j}", "func": IDLE, "trigger": trigger})
    return await _add_all(specs)


@flask_app.route("/bench/lag", methods=["GET", "POST"])
async def lag_view() -> Any:
    if request.method == "POST":
        lag.start(float(request.args["seconds"]))
    return jsonify(lag.summary())


app = to_asgi(flask_app)
