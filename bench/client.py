"""Which engine under the shared client: ``python -m bench.client [--runs N] [--quick]``.

Times every engine of ``bench.engines`` and plain aiohttp (the reference) on two
workloads, each in a fresh process pinned to CPU 0 against ``bench.upstream`` on
CPU 1, and prints medians of the ratios to aiohttp measured in the same run:

- fan-out: N concurrent GETs (2000) answered after 200 ms, on new connections,
  like bench M1: makespan (first request sent -> last body read) and the
  process's CPU time (all threads, so a Rust engine's own threads count);
- keep-alive: C clients (100) each looping GET on an instant answer for S
  seconds over kept-alive connections: requests/s, p99 latency, CPU per request.

Then it prints the correctness matrix of ``bench.client_checks`` (``--check``
prints only that). Results go to ``bench/results/client.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
import httpx

from asyncapp.http import close_client
from bench import client_checks, procs
from bench.engines import ENGINES
from bench.stats import median, percentile

RESULTS = Path(__file__).resolve().parent / "results" / "client.json"
REFERENCE = "aiohttp"
#: ``asyncapp.aiohttp_session()``: aiohttp's API on the shared client's own session.
SESSION = "shipped-session"
CANDIDATES = (REFERENCE, *ENGINES, SESSION)
Get = Callable[[str], Awaitable[None]]


@dataclass(frozen=True)
class Sizes:
    """Workload sizes; ``QUICK`` checks that every engine and path works."""

    fanout_requests: int = 2000
    fanout_delay_ms: int = 200
    loop_clients: int = 100
    loop_seconds: float = 5.0


FULL = Sizes()
QUICK = Sizes(fanout_requests=500, loop_seconds=1.0)


@contextlib.asynccontextmanager
async def getter(engine: str, connections: int) -> AsyncIterator[Get]:
    """A function that GETs a URL and reads the body through ``engine``."""
    if engine == REFERENCE:
        connector = aiohttp.TCPConnector(limit=connections)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def get_aiohttp(url: str) -> None:
                async with session.get(url) as response:
                    await response.read()
                    response.raise_for_status()

            yield get_aiohttp
        return
    client = ENGINES["shipped" if engine == SESSION else engine](connections, httpx.Timeout(60.0))
    if engine == SESSION:
        shared = client.aiohttp_session  # type: ignore[attr-defined]

        async def get_session(url: str) -> None:
            async with shared.get(url) as response:
                await response.read()
                response.raise_for_status()

        try:
            yield get_session
        finally:
            await close_client(client)
        return
    try:

        async def get_httpx(url: str) -> None:
            (await client.get(url)).raise_for_status()

        yield get_httpx
    finally:
        await close_client(client)


async def fan_out(engine: str, upstream: str, sizes: Sizes) -> dict[str, float]:
    """Makespan and CPU seconds of ``fanout_requests`` concurrent GETs on new connections."""
    n = sizes.fanout_requests
    async with getter(engine, n) as get:
        await get(f"{upstream}/delay?ms=0")  # imports, lazy set-up, one connection
        url = f"{upstream}/delay?ms={sizes.fanout_delay_ms}"
        began, cpu = time.perf_counter(), time.process_time()
        replies = await asyncio.gather(*(get(url) for _ in range(n)), return_exceptions=True)
        makespan, cpu = time.perf_counter() - began, time.process_time() - cpu
    errors = [r for r in replies if r is not None]
    return {
        "makespan_s": makespan,
        "cpu_s": cpu,
        "errors": len(errors),
        **({"first_error": repr(errors[0])[:300]} if errors else {}),
    }


async def keep_alive(engine: str, upstream: str, sizes: Sizes) -> dict[str, float]:
    """Requests/s, latency p50/p99 (ms) and CPU per request (us) of looping clients."""
    url = f"{upstream}/delay?ms=0"
    latencies: list[float] = []
    errors = 0

    async def client(get: Get, deadline: float) -> None:
        nonlocal errors
        while (began := time.perf_counter()) < deadline:
            try:
                await get(url)
            except Exception:
                errors += 1
            latencies.append(time.perf_counter() - began)

    async with getter(engine, sizes.loop_clients) as get:
        # Open every connection first, so the timed part is all keep-alive.
        await asyncio.gather(*(get(url) for _ in range(sizes.loop_clients)))
        began, cpu = time.perf_counter(), time.process_time()
        deadline = began + sizes.loop_seconds
        await asyncio.gather(*(client(get, deadline) for _ in range(sizes.loop_clients)))
        elapsed, cpu = time.perf_counter() - began, time.process_time() - cpu
    ms = [s * 1000.0 for s in latencies]
    return {
        "rps": len(ms) / elapsed,
        "p50_ms": percentile(ms, 50),
        "p99_ms": percentile(ms, 99),
        "cpu_us_per_request": cpu / max(1, len(ms)) * 1e6,
        "errors": errors,
    }


WORKLOADS = {"fanout": fan_out, "keepalive": keep_alive}


def measure(engine: str, workload: str, upstream: str, sizes: Sizes) -> dict[str, Any]:
    """Run one workload for one engine in a fresh process on the server CPU."""
    argv = [
        "taskset", "-c", str(procs.SERVER_CPU), sys.executable, "-m", "bench.client",
        "--worker", engine, workload, "--upstream", upstream, "--sizes", json.dumps(asdict(sizes)),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(procs.REPO)}
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=300, check=True, cwd=procs.REPO, env=env
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        return {"error": f"{type(exc).__name__}: {str(exc.stderr)[-500:]}"}
    return dict(json.loads(done.stdout.splitlines()[-1]))


#: Table columns: (workload, field, label, lower is better).
COLUMNS = [
    ("fanout", "makespan_s", "fan-out s", True),
    ("fanout", "cpu_s", "CPU s", True),
    ("keepalive", "rps", "req/s", False),
    ("keepalive", "p99_ms", "p99 ms", True),
    ("keepalive", "cpu_us_per_request", "CPU us/req", True),
]


def summarize(runs: list[dict[str, dict[str, dict[str, Any]]]]) -> dict[str, dict[str, float]]:
    """``{engine: {field: median, field_ratio: median of same-run ratios to aiohttp}}``."""

    def value(run: dict[str, Any], engine: str, workload: str, field: str) -> float:
        figure = run.get(workload, {}).get(engine, {}).get(field)
        if not isinstance(figure, int | float):
            return math.nan
        return float(figure)

    table: dict[str, dict[str, float]] = {}
    for engine in CANDIDATES:
        row: dict[str, float] = {}
        for workload, field, _, _ in COLUMNS:
            values = [value(run, engine, workload, field) for run in runs]
            ratios = [
                v / ref if (ref := value(run, REFERENCE, workload, field)) else math.nan
                for v, run in zip(values, runs, strict=True)
            ]
            row[field] = median(values)
            row[f"{field}_ratio"] = median(ratios)
        row["errors"] = sum(
            value(run, engine, w, "errors") for run in runs for w in WORKLOADS
        )  # fmt: skip
        table[engine] = row
    return table


def render(table: dict[str, dict[str, float]], runs: int) -> str:
    """Medians, each followed by its ratio to aiohttp (x), one row per engine."""
    head = f"{'engine':<14}" + "".join(f"{label:>12}{'x':>7}" for _, _, label, _ in COLUMNS)
    lines = [
        f"client engines: medians of {runs} run(s); x = ratio to aiohttp in the same run",
        head,
    ]
    for engine, row in table.items():
        cells = "".join(
            f"{row[field]:>12.4g}{row[f'{field}_ratio']:>7.2f}" for _, field, _, _ in COLUMNS
        )
        lines.append(
            f"{engine:<14}{cells}" + (f"  errors {row['errors']:.0f}" if row["errors"] else "")
        )
    return "\n".join(lines)


def bench(engines: list[str], sizes: Sizes, runs: int) -> list[dict[str, Any]]:
    """``runs`` rounds of both workloads for every engine, the order rotated each round."""
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-client-") as workdir:
        port = procs.free_port()
        cmd = [sys.executable, "-m", "bench.upstream", "--port", str(port)]
        with procs.running("upstream", cmd, procs.LOAD_CPU, Path(workdir)) as upstream_proc:
            upstream = f"http://127.0.0.1:{port}"
            procs.wait_ready(upstream_proc, f"{upstream}/delay?ms=0")
            for run in range(runs):
                order = engines[run % len(engines) :] + engines[: run % len(engines)]
                per_run: dict[str, dict[str, Any]] = {w: {} for w in WORKLOADS}
                for workload in WORKLOADS:
                    for engine in order:
                        figures = measure(engine, workload, upstream, sizes)
                        per_run[workload][engine] = figures
                        shown = {k: round(v, 4) for k, v in figures.items() if k != "error"}
                        what = figures.get("error", shown)
                        print(f"run {run + 1}/{runs} {workload} {engine}: {what}", file=sys.stderr)
                results.append(per_run)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.client", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--runs", type=int, default=None, help="rounds (default 3; 1 with --quick)")
    parser.add_argument("--quick", action="store_true", help="small sizes, one round")
    parser.add_argument("--engines", default=",".join(CANDIDATES), help="comma-separated")
    parser.add_argument("--check", action="store_true", help="only the correctness matrix")
    parser.add_argument("--no-check", action="store_true", help="skip the correctness matrix")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--worker", nargs=2, metavar=("ENGINE", "WORKLOAD"), help=argparse.SUPPRESS)
    parser.add_argument("--upstream", help=argparse.SUPPRESS)
    parser.add_argument("--sizes", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        engine, workload = args.worker
        sizes = Sizes(**json.loads(args.sizes))
        print(json.dumps(asyncio.run(WORKLOADS[workload](engine, args.upstream, sizes))))
        return 0
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    if bad := [e for e in engines if e not in CANDIDATES]:
        parser.error(f"unknown engine: {', '.join(bad)}; use {', '.join(CANDIDATES)}")
    document: dict[str, Any] = {}
    if not args.check:
        procs.require_tools()
        procs.raise_open_files_limit()
        os.sched_setaffinity(0, {procs.LOAD_CPU})
        if REFERENCE not in engines:
            engines.insert(0, REFERENCE)
        sizes = QUICK if args.quick else FULL
        runs = args.runs or (1 if args.quick else 3)
        results = bench(engines, sizes, runs)
        table = summarize(results)
        document |= {"sizes": asdict(sizes), "runs": results, "medians": table}
        print(render({e: table[e] for e in engines}, runs))
    if not args.no_check:
        httpx_engines = [e for e in engines if e in ENGINES]
        checks = asyncio.run(client_checks.matrix(httpx_engines))
        document["checks"] = checks
        print("\ncorrectness (ok, or what happened instead):")
        print(client_checks.render(checks))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=2, allow_nan=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
