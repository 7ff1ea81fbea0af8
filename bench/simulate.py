"""``python -m bench.simulate``: N no-op jobs every minute across 4 processes on PostgreSQL.

What scale-out looks like past M6: ``--jobs`` (default 10,000 then 100,000) interval
jobs of ``bench.stacks.asyncapp_jobs:idle`` every 60 s, spread evenly over the minute
(job j first due at T0 + j * 60 / N), inserted straight into a fresh PostgreSQL schema
in batches (adding 100,000 through the API would take longer than the measurement),
then ``--processes`` asyncapp servers (the bench's asyncapp stack, the shipped
``hypercorn.toml``, unpinned) fire them.  Once every process fires its share, one
window of ``--minutes`` minutes is measured:

- claims/s: scheduled times in the window that have a row in the run ledger, per
  second, all processes together (and each process's share of them);
- CPU per process: user + system time over the window (``/proc/<pid>/stat``), as a
  fraction of one core;
- loop lag p99 per process: the bench's 10 ms sleep probe (``bench/stacks/lag.py``)
  run in each server for the whole window;
- start lateness p50/p99 (run ``started_at`` - scheduled time) from the ledger;
- every scheduled time once: in the window, the ledger must hold exactly N *
  minutes rows, one per (job, scheduled time), each a ``success``;
- RSS per process after the window, and claims each process attempted (its share,
  and swept from others) from ``/metrics``.

The servers run with ``ASYNCAPP_PROCESS_TIMEOUT=30`` (see ``simulate``).

It prints a table per N and how each figure grew from the first N to the last, and
writes ``bench/results/simulate.json``.  Needs the PostgreSQL server at
127.0.0.1:5432 (database ``test``, trust auth) unless ``--database`` names another.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import re
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
from sqlalchemy import create_engine, insert, text

from asyncapp.model.job import JobDef
from asyncapp.store.database import Database
from asyncapp.store.tables import jobs_table
from bench import procs
from bench.stacks.launch import hypercorn_config

RESULTS = Path(__file__).resolve().parent / "results" / "simulate.json"
ADMIN_URL = "postgresql://127.0.0.1:5432/test"
IDLE = "bench.stacks.asyncapp_jobs:idle"
PERIOD_S = 60.0
LAG_TARGET_MS = 10.0


@contextlib.contextmanager
def fresh_schema(admin_url: str) -> Iterator[str]:
    """A new schema on ``admin_url``'s database; yields a SQLAlchemy URL using it."""
    schema = f"sim_{uuid.uuid4().hex[:10]}"
    admin = psycopg.connect(admin_url, autocommit=True)
    admin.execute(f'CREATE SCHEMA "{schema}"')
    base = admin_url.replace("postgresql://", "postgresql+psycopg://", 1)
    try:
        yield f"{base}?options=-csearch_path%3D{schema}"
    finally:
        admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
        admin.close()


def insert_jobs(url: str, count: int, first: datetime) -> float:
    """Migrate the schema and insert ``count`` jobs every minute from ``first``; seconds."""
    began = time.monotonic()
    db = Database(url)

    async def migrate() -> None:
        await db.open()
        await db.close()

    asyncio.run(migrate())
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            for start in range(0, count, 5000):
                rows = []
                for j in range(start, min(count, start + 5000)):
                    due = first + timedelta(seconds=j * PERIOD_S / count)
                    trigger = {
                        "type": "interval",
                        "seconds": PERIOD_S,
                        "start_date": due.isoformat(),
                    }
                    job = JobDef(id=f"sim-{j}", func=IDLE, trigger=trigger, next_run_time=due)
                    rows.append({"id": job.id, "updated_at": time.time(), **job.columns()})
                conn.execute(insert(jobs_table), rows)
    finally:
        engine.dispose()
    return time.monotonic() - began


def metrics_text(base: str) -> str:
    return httpx.get(f"{base}/metrics", timeout=30).text


def attempted(text_: str) -> dict[str, float]:
    found = re.findall(r'^asyncapp_claims_attempted_total\{path="(\w+)"\} (\S+)$', text_, re.M)
    return {"share": 0.0, "sweep": 0.0} | {path: float(value) for path, value in found}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return math.nan


def simulate(
    count: int, processes: int, minutes: int, admin_url: str, workdir: Path
) -> dict[str, Any]:
    """One simulation of ``count`` jobs; returns its figures."""
    with fresh_schema(admin_url) as url:
        # The first due times come once the servers have had time to load every job.
        first = datetime.now(UTC) + timedelta(seconds=30 + count / 2000)
        insert_s = insert_jobs(url, count, first)
        _progress(f"N={count}: inserted in {insert_s:.1f} s; starting {processes} servers")
        env = {
            "ASYNCAPP_DATABASE_URL": url,
            "ASYNCAPP_JOB_MODULES": "bench.stacks.asyncapp_jobs",
            "ASYNCAPP_MAX_JOBS": str(count + 100),
            "ASYNCAPP_METRICS_PUBLIC": "true",
            "ASYNCAPP_ACCESS_LOG": "false",
            # The PostgreSQL session's idle-in-transaction limit is max(10 s, this):
            # loading 100,000 jobs while four servers start on two cores holds the
            # startup read's transaction open longer than 10 s.
            "ASYNCAPP_PROCESS_TIMEOUT": "30",
        }
        with contextlib.ExitStack() as stack:
            servers: list[tuple[str, procs.Proc]] = []
            for index in range(processes):
                port = procs.free_port()
                config = hypercorn_config(port, workdir, shipped=True)
                argv = [sys.executable, "-m", "hypercorn", "-c", str(config),
                        "bench.stacks.asyncapp_app:app"]  # fmt: skip
                proc = stack.enter_context(
                    procs.running(f"sim-{count}-{index}", argv, procs.ALL_CPUS, workdir, env)
                )
                servers.append((f"http://127.0.0.1:{port}", proc))
            for base, proc in servers:
                procs.wait_ready(proc, f"{base}/healthz", timeout=600)
            up_at = time.time()
            _wait_shared(servers, processes)
            shared_s = time.time() - up_at
            window_start = max(first.timestamp(), time.time() + 5.0)
            window_start = math.ceil(window_start)
            window_end = window_start + minutes * PERIOD_S
            time.sleep(max(0.0, window_start - time.time()))
            cpu_before = [procs.cpu_seconds(proc.pid) for _, proc in servers]
            claims_before = [attempted(metrics_text(base)) for base, _ in servers]
            for base, _ in servers:
                httpx.post(f"{base}/bench/lag?seconds={window_end - time.time()}", timeout=30)
            time.sleep(max(0.0, window_end - time.time()))
            cpu_after = [procs.cpu_seconds(proc.pid) for _, proc in servers]
            lags = [httpx.get(f"{base}/bench/lag", timeout=30).json() for base, _ in servers]
            time.sleep(5.0)  # the window's last runs end and are recorded
            claims_after = [attempted(metrics_text(base)) for base, _ in servers]
            rss = [rss_mb(proc.pid) for _, proc in servers]
        ledger = _ledger(url, window_start, window_end)
    seconds = window_end - window_start
    expected = count * minutes
    per_process = sorted(ledger["per_process"].values(), reverse=True)
    return {
        "jobs": count,
        "processes": processes,
        "window_s": seconds,
        "insert_s": insert_s,
        "all_sharing_after_s": shared_s,
        "expected": expected,
        "rows": ledger["rows"],
        "distinct": ledger["distinct"],
        "success": ledger["success"],
        "once": ledger["rows"] == ledger["distinct"] == ledger["success"] == expected,
        "claims_per_s": ledger["rows"] / seconds,
        "runs_per_process": per_process,
        "cpu_per_process": [(a - b) / seconds for a, b in zip(cpu_after, cpu_before, strict=True)],
        "lag_p99_ms": [lag["p99_ms"] for lag in lags],
        "lag_max_ms": [lag["max_ms"] for lag in lags],
        "lateness_p50_ms": ledger["lateness_p50_ms"],
        "lateness_p99_ms": ledger["lateness_p99_ms"],
        "rss_mb": rss,
        "attempted_share": [
            a["share"] - b["share"] for a, b in zip(claims_after, claims_before, strict=True)
        ],
        "attempted_sweep": [
            a["sweep"] - b["sweep"] for a, b in zip(claims_after, claims_before, strict=True)
        ],
    }


def _wait_shared(servers: list[tuple[str, procs.Proc]], processes: int) -> None:
    """Until every server fires a share of ``processes``."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError, KeyError, ValueError):
            shares = [
                httpx.get(f"{base}/healthz", timeout=10).json()["scheduler"]["process"]["share"]
                for base, _ in servers
            ]
            if all(share[1] == processes for share in shares):
                return
        time.sleep(0.2)
    raise RuntimeError(f"the servers did not share the jobs among {processes} in 120 s")


def _ledger(url: str, start: float, end: float) -> dict[str, Any]:
    engine = create_engine(url)
    window = {
        "start": datetime.fromtimestamp(start, UTC),
        "end": datetime.fromtimestamp(end, UTC),
    }
    where = "scheduled_for >= :start AND scheduled_for < :end"
    try:
        with engine.connect() as conn:
            rows, distinct, success = conn.execute(
                text(
                    "SELECT count(*), count(DISTINCT (job_id, scheduled_for)), "
                    "sum(CASE WHEN status = 'success' THEN 1 ELSE 0 END) "
                    f"FROM asyncapp_runs WHERE {where}"
                ),
                window,
            ).one()
            p50, p99 = conn.execute(
                text(
                    "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY lateness), "
                    "percentile_cont(0.99) WITHIN GROUP (ORDER BY lateness) FROM ("
                    "SELECT extract(epoch FROM started_at - scheduled_for) * 1000 AS lateness "
                    f"FROM asyncapp_runs WHERE {where} AND started_at IS NOT NULL) AS l"
                ),
                window,
            ).one()
            per_process = dict(
                conn.execute(
                    text(
                        f"SELECT process_id, count(*) FROM asyncapp_runs WHERE {where} "
                        "GROUP BY process_id"
                    ),
                    window,
                ).all()
            )
    finally:
        engine.dispose()
    return {
        "rows": int(rows),
        "distinct": int(distinct),
        "success": int(success or 0),
        "lateness_p50_ms": float(p50) if p50 is not None else math.nan,
        "lateness_p99_ms": float(p99) if p99 is not None else math.nan,
        "per_process": {str(k): int(v) for k, v in per_process.items()},
    }


def _fmt(values: list[float], unit: str = "", digits: int = 2) -> str:
    return " / ".join(f"{v:.{digits}f}{unit}" for v in values)


def render(results: list[dict[str, Any]]) -> str:
    lines = [
        "| jobs | window | claims/s | every time once | runs per process | CPU per process "
        "(cores) | loop lag p99 per process | start lateness p50 / p99 | RSS per process | "
        "swept |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        lines.append(
            f"| {r['jobs']:,} | {r['window_s']:.0f} s | {r['claims_per_s']:.0f} | "
            f"{'yes' if r['once'] else 'NO'} ({r['rows']:,} rows of {r['expected']:,}) | "
            f"{' / '.join(str(n) for n in r['runs_per_process'])} | "
            f"{_fmt(r['cpu_per_process'])} | {_fmt(r['lag_p99_ms'], ' ms', 1)} | "
            f"{r['lateness_p50_ms']:.1f} / {r['lateness_p99_ms']:.1f} ms | "
            f"{_fmt(r['rss_mb'], ' MB', 0)} | {sum(r['attempted_sweep']):.0f} |"
        )
    if len(results) >= 2:
        a, b = results[0], results[-1]
        growth = b["jobs"] / a["jobs"]
        lines.append("")
        lines.append(f"From {a['jobs']:,} to {b['jobs']:,} jobs ({growth:.0f}x):")
        for key, label in (
            ("claims_per_s", "claims/s"),
            ("cpu_per_process", "CPU per process (mean)"),
            ("lag_p99_ms", "loop lag p99 (worst process)"),
            ("lateness_p99_ms", "start lateness p99"),
            ("rss_mb", "RSS per process (mean)"),
        ):
            first, last = _summary(a[key], key), _summary(b[key], key)
            lines.append(f"- {label}: {first:.3g} -> {last:.3g} ({last / first:.2f}x)")
        lines.append(
            f"- loop lag p99 <= {LAG_TARGET_MS:.0f} ms: "
            + ", ".join(
                f"{r['jobs']:,} jobs {'pass' if max(r['lag_p99_ms']) <= LAG_TARGET_MS else 'fail'}"
                for r in results
            )
        )
    return "\n".join(lines)


def _summary(value: Any, key: str) -> float:
    if isinstance(value, list):
        return max(value) if key == "lag_p99_ms" else sum(value) / len(value)
    return float(value)


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.simulate", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--jobs", default="10000,100000", help="job counts, e.g. 10000,100000")
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--minutes", type=int, default=1, help="minutes measured per count")
    parser.add_argument("--database", default=ADMIN_URL, help="PostgreSQL URL (psycopg form)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    counts = [int(n) for n in args.jobs.split(",") if n.strip()]
    procs.raise_open_files_limit()
    results = []
    with tempfile.TemporaryDirectory(prefix="simulate-") as workdir:
        for count in counts:
            began = time.monotonic()
            result = simulate(count, args.processes, args.minutes, args.database, Path(workdir))
            result["seconds"] = time.monotonic() - began
            results.append(result)
            _progress(json.dumps(result))
    document = {
        "meta": {
            "started": datetime.now(UTC).isoformat(),
            "processes": args.processes,
            "minutes": args.minutes,
            "cpus": len(os.sched_getaffinity(0)),
        },
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=2, allow_nan=True))
    print(render(results))
    print(f"\nwrote {args.out}")
    return 0 if all(r["once"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
