"""Seed stack: the thread-based design asyncapp replaces, as tutorials teach it.

Flask's threaded dev server (``app.run(threaded=True)``), an APScheduler
``BackgroundScheduler`` with its default 10-thread pool and memory store, and one
sync ``httpx.Client`` for jobs and views. One change from that design: M1's
one-shot jobs get ``misfire_grace_time=None``, since with the default 1 s the pool
would drop ~97% of 2000 simultaneous jobs and the makespan would mean nothing.
And the listen backlog is the bench's ``BACKLOG`` for every stack (see launch.py).

Run: ``python -m bench.stacks.seed_app --port P``; needs ``BENCH_UPSTREAM``.
``BENCH_STORED_JOBS=N`` adds N hourly jobs before serving (M5).
"""

from __future__ import annotations

import argparse
import atexit
import os
from datetime import UTC, datetime, timedelta

import httpx
from apscheduler.schedulers.background import BackgroundScheduler
from flask import Flask, Response, jsonify, request
from werkzeug.serving import BaseWSGIServer

from bench.stacks.launch import BACKLOG

UPSTREAM = os.environ.get("BENCH_UPSTREAM", "http://127.0.0.1:1")
HOURLY_START = datetime(2100, 1, 1, tzinfo=UTC)

app = Flask(__name__)
client = httpx.Client(timeout=60.0)
scheduler = BackgroundScheduler(timezone="UTC")


def call(url: str) -> None:
    """The job: GET ``url``."""
    client.get(url)


def idle() -> None:
    """A stored job that never runs during the bench (due in 2100)."""


def _epoch(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


@app.route("/healthz")
@app.route("/bench/sync")
def ok() -> str:
    return "ok"


@app.route("/bench/async")
def async_route() -> str:
    client.get(f"{UPSTREAM}/delay?ms=100")
    return "ok"


@app.post("/bench/oneshot")
def oneshot() -> Response:
    n, tag, ms = int(request.args["n"]), request.args["tag"], request.args["ms"]
    at = _epoch(float(request.args["at"]))
    for j in range(n):
        url = f"{UPSTREAM}/delay?ms={ms}&tag={tag}&job={j}"
        scheduler.add_job(call, "date", run_date=at, args=[url], misfire_grace_time=None)
    return jsonify(scheduled=n)


@app.post("/bench/interval")
def interval() -> Response:
    n, start, runs = int(request.args["n"]), float(request.args["start"]), int(request.args["runs"])
    for j in range(n):
        first = start + j / n
        url = f"{UPSTREAM}/delay?ms={request.args['ms']}&tag={request.args['tag']}&job={j}"
        scheduler.add_job(
            call,
            "interval",
            seconds=1,
            start_date=_epoch(first),
            end_date=_epoch(first + runs - 0.5),
            args=[url],
        )
    return jsonify(scheduled=n)


def main() -> None:
    parser = argparse.ArgumentParser(description="seed stack")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    for j in range(int(os.environ.get("BENCH_STORED_JOBS", "0"))):
        scheduler.add_job(idle, "interval", hours=1, start_date=HOURLY_START + timedelta(seconds=j))
    scheduler.start()
    atexit.register(lambda: scheduler.shutdown())
    BaseWSGIServer.request_queue_size = BACKLOG
    app.run(host="127.0.0.1", port=args.port, threaded=True)


if __name__ == "__main__":
    main()
