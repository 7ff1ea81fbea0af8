"""Event-loop lag while a few hundred jobs fire per second, persistence on.

Compares asyncapp (every run claimed in SQLite and recorded, from its database
threads) with APScheduler's own ``SQLAlchemyJobStore`` on the same
SQLite file kind, each on an ``AsyncIOScheduler`` in a fresh process of its own
(so neither inherits the other's heap or garbage-collector state).  Lag is how
late a 10 ms ``asyncio.sleep`` wakes up, sampled continuously.

    .venv/bin/python -m bench.loop_lag [--jobs 300] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.asyncio import AsyncIOScheduler

import asyncapp
from asyncapp.model.change import Actor
from asyncapp.model.tasks import reference
from asyncapp.runtime import Runtime
from asyncapp.settings import load_settings

counter = {"runs": 0}


@asyncapp.task
async def noop() -> None:
    counter["runs"] += 1


async def sample_lag(stop: asyncio.Event) -> list[float]:
    lags = []
    while not stop.is_set():
        start = time.perf_counter()
        await asyncio.sleep(0.01)
        lags.append((time.perf_counter() - start - 0.01) * 1000)
    return lags


async def measure(add_jobs, seconds: float) -> tuple[list[float], int]:
    counter["runs"] = 0
    stop = asyncio.Event()
    sampler = asyncio.create_task(sample_lag(stop))
    await add_jobs()
    await asyncio.sleep(seconds)
    stop.set()
    return await sampler, counter["runs"]


def staggered(jobs: int) -> list[datetime]:
    start = datetime.now(UTC) + timedelta(seconds=1)
    return [start + timedelta(seconds=i / jobs) for i in range(jobs)]


async def run_asyncapp(directory: Path, jobs: int, seconds: float) -> tuple[list[float], int]:
    settings = load_settings(
        {
            "ASYNCAPP_DATABASE_URL": f"sqlite:///{directory / 'asyncapp.store.database'}",
            "ASYNCAPP_JOB_MODULES": "",
        }
    )
    runtime = Runtime(settings)
    await runtime.start()
    try:

        async def add() -> None:
            actor = Actor("api", "bench")
            for i, start in enumerate(staggered(jobs)):
                trigger = {"type": "interval", "seconds": 1, "start_date": start.isoformat()}
                spec = {"id": f"j{i}", "func": reference(noop), "trigger": trigger}
                await runtime.service.add_job(spec, actor)

        return await measure(add, seconds)
    finally:
        await runtime.stop()


async def run_apscheduler(directory: Path, jobs: int, seconds: float) -> tuple[list[float], int]:
    store = SQLAlchemyJobStore(url=f"sqlite:///{directory / 'aps.db'}")
    scheduler = AsyncIOScheduler(jobstores={"default": store}, timezone=UTC)
    scheduler.start()
    try:

        async def add() -> None:
            for i, start in enumerate(staggered(jobs)):
                scheduler.add_job(
                    noop,
                    "interval",
                    seconds=1,
                    start_date=start,
                    id=f"j{i}",
                    misfire_grace_time=60,
                )

        return await measure(add, seconds)
    finally:
        scheduler.shutdown(wait=False)


def summary(lags: list[float]) -> tuple[float, float, float]:
    cuts = statistics.quantiles(lags, n=100)
    return cuts[49], cuts[98], max(lags)


STORES = {"asyncapp": run_asyncapp, "apscheduler-sqlalchemy": run_apscheduler}


async def one(store: str, jobs: int, seconds: float) -> None:
    # Under the working directory, not /tmp: the database should sit on the
    # disk a deployment's ./instance/ would, where a commit costs an fsync.
    with tempfile.TemporaryDirectory(dir=".", prefix=".loop_lag-") as tmp:
        lags, runs = await STORES[store](Path(tmp), jobs, seconds)
    print(json.dumps({"runs": runs, "lag": summary(lags)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=300, help="interval jobs, each every 1 s")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--store", choices=STORES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.store:
        asyncio.run(one(args.store, args.jobs, args.seconds))
        return
    rows = []
    for store in STORES:
        command = [
            sys.executable,
            "-m",
            "bench.loop_lag",
            "--store",
            store,
            "--jobs",
            str(args.jobs),
            "--seconds",
            str(args.seconds),
        ]
        output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        result = json.loads(output.strip().splitlines()[-1])
        rows.append((store, result["runs"], *result["lag"]))
    print(
        f"{args.jobs} interval jobs every 1 s for {args.seconds:.0f} s (runs expected ~"
        f"{int(args.jobs * (args.seconds - 1))})"
    )
    print(f"{'store':<24}{'runs':>8}{'lag p50 ms':>12}{'lag p99 ms':>12}{'lag max ms':>12}")
    for name, runs, p50, p99, worst in rows:
        print(f"{name:<24}{runs:>8}{p50:>12.2f}{p99:>12.2f}{worst:>12.2f}")
    print(f"p99 lag ratio apscheduler/asyncapp: {rows[1][3] / rows[0][3]:.1f}x")


if __name__ == "__main__":
    main()
