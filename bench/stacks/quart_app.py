"""Quart stack: the peer a user would pick instead of asyncapp, written as they would.

Quart (Flask's API on asyncio) under Hypercorn, APScheduler's ``AsyncIOScheduler``
started on the server loop, coroutine jobs added with ``add_job``, a memory job
store, and one plain ``httpx.AsyncClient()`` with httpx's defaults (its own
connection pool: 100 connections, 5 s timeouts) for jobs and views. M1's
one-shot jobs get ``misfire_grace_time=None`` as on the seed stack, so a job
that starts late still runs and the makespan counts it.

Serve with ``hypercorn bench.stacks.quart_app:app``; needs ``BENCH_UPSTREAM``.
``BENCH_STORED_JOBS=N`` adds N hourly jobs at startup (M5), as on the seed stack.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

import httpx
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from quart import Quart, Response, jsonify, request

from bench.stacks.lag import LagProbe

UPSTREAM = os.environ.get("BENCH_UPSTREAM", "http://127.0.0.1:1")
HOURLY_START = datetime(2100, 1, 1, tzinfo=UTC)

app = Quart(__name__)
scheduler = AsyncIOScheduler(timezone="UTC")
lag = LagProbe()
clients: list[httpx.AsyncClient] = []


def client() -> httpx.AsyncClient:
    """The one client, opened at startup."""
    return clients[0]


async def call(url: str) -> None:
    """The job: GET ``url``."""
    await client().get(url)


async def idle() -> None:
    """A stored job that never runs during the bench (due in 2100)."""


def _epoch(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


@app.before_serving
async def startup() -> None:
    clients.append(httpx.AsyncClient())
    for j in range(int(os.environ.get("BENCH_STORED_JOBS", "0"))):
        scheduler.add_job(idle, "interval", hours=1, start_date=HOURLY_START + timedelta(seconds=j))
    scheduler.start()


@app.after_serving
async def shutdown() -> None:
    scheduler.shutdown(wait=False)
    await clients.pop().aclose()


@app.route("/healthz")
async def healthz() -> str:
    return "ok"


@app.route("/bench/sync")
def sync_view() -> str:
    """A plain ``def`` view: Quart runs it in its thread pool, as it would a user's."""
    return "ok"


@app.route("/bench/async")
async def async_view() -> str:
    await client().get(f"{UPSTREAM}/delay?ms=100")
    return "ok"


@app.post("/bench/oneshot")
async def oneshot() -> Response:
    q = request.args
    n, at = int(q["n"]), _epoch(float(q["at"]))
    for j in range(n):
        url = f"{UPSTREAM}/delay?ms={q['ms']}&tag={q['tag']}&job={j}"
        scheduler.add_job(call, "date", run_date=at, args=[url], misfire_grace_time=None)
    return jsonify(scheduled=n)


@app.post("/bench/interval")
async def interval() -> Response:
    q = request.args
    n, start, runs = int(q["n"]), float(q["start"]), int(q["runs"])
    for j in range(n):
        first = start + j / n
        url = f"{UPSTREAM}/delay?ms={q['ms']}&tag={q['tag']}&job={j}"
        scheduler.add_job(
            call,
            "interval",
            seconds=1,
            start_date=_epoch(first),
            end_date=_epoch(first + runs - 0.5),
            args=[url],
        )
    return jsonify(scheduled=n)


@app.route("/bench/lag", methods=["GET", "POST"])
async def lag_view() -> Response:
    if request.method == "POST":
        lag.start(float(request.args["seconds"]))
    return jsonify(lag.summary())
