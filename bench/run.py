"""The one bench command: ``python -m bench [--runs N] [--quick] [--only M1,M3]``.

Starts the upstream (CPU 1), then for each run and metric starts every stack as a
fresh server process (CPU 0), drives it from this process (CPU 1), stops it, and
finally prints medians, same-run ratios and PASS/FAIL, and writes
``bench/results/latest.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench import driver, procs, report
from bench.stacks.launch import LOOP_STACKS, MEMORY_STACKS, STACKS, launch

RESULTS = Path(__file__).resolve().parent / "results" / "latest.json"
METRICS = ("M1", "M2", "M3", "M4", "M5", "M6")
METRIC_STACKS = {
    "M1": STACKS,
    "M2": STACKS,
    "M3": STACKS,
    "M4": STACKS,
    "M5": ("asyncapp", "quart", "seed"),
    "M6": ("asyncapp",),
}


@dataclass(frozen=True)
class Sizes:
    """Workload sizes; ``FULL`` the ones the targets are set for, ``QUICK`` a smoke test."""

    m1_jobs: int = 2000
    m1_call_ms: int = 200
    #: Adding 2000 jobs through the job service takes 2.5-4 s on this machine with
    #: SQLite's WAL, 8-10 s with the rollback journal it runs in now (an fsync per
    #: commit: docs/deploy.md).
    m1_lead_s: float = 14.0
    m1_timeout_s: float = 90.0
    #: M1 stops waiting this long after the last completion: the jobs still
    #: missing have failed (a plain ``httpx.AsyncClient`` gives up after 5 s).
    m1_quiet_s: float = 10.0
    m2_jobs: int = 200
    m2_runs: int = 20
    m2_call_ms: int = 20
    m2_lead_s: float = 2.0
    m3_clients: tuple[int, ...] = report.M3_CLIENTS
    m3_seconds: float = 10.0
    m4_clients: int = 32
    m4_seconds: float = 10.0
    m5_stored: int = 10_000
    m5_runs: int = 10
    m6_jobs: int = 4000
    #: Adding M6's 4000 jobs through the job service takes 7-9 s on this machine with
    #: WAL, about twice that with the rollback journal; the due time must come after
    #: the last one is added.
    m6_lead_s: float = 30.0


FULL = Sizes()
QUICK = Sizes(
    m1_jobs=500, m1_lead_s=2.0, m1_timeout_s=30.0, m1_quiet_s=6.0, m2_runs=3, m2_lead_s=1.5,
    m3_seconds=2.0, m4_seconds=3.0, m5_stored=2000, m5_runs=2, m6_jobs=1000, m6_lead_s=5.0,
)  # fmt: skip


class Bench:
    """Runs metrics against fresh server processes; one instance per bench command."""

    def __init__(self, sizes: Sizes, workdir: Path, upstream: str) -> None:
        self.sizes = sizes
        self.workdir = workdir
        self.upstream = upstream
        self._serial = itertools.count()

    @contextlib.contextmanager
    def serve(
        self,
        stack: str,
        env: dict[str, str] | None = None,
        database: Path | None = None,
        workers: int = 0,
    ) -> Iterator[tuple[str, procs.Proc, float]]:
        """Start ``stack`` on CPU 0 (with ``workers``: on both CPUs, every worker up);
        yields (base URL, process, startup seconds)."""
        port = procs.free_port()
        serial = next(self._serial)
        db = database or self.workdir / f"{stack}-{serial}.db"
        how = launch(stack, port, self.upstream, self.workdir, db, workers=workers)
        name = f"{stack}-{serial}"
        cpu = procs.ALL_CPUS if workers else procs.SERVER_CPU
        with procs.running(name, how.argv, cpu, self.workdir, how.env | (env or {})) as p:
            base = f"http://127.0.0.1:{port}"
            startup = procs.wait_ready(p, f"{base}/healthz")
            if workers:
                procs.wait_workers(p, f"{base}/healthz", workers)
            try:
                yield base, p, startup
            except Exception:
                _progress(f"--- last lines of {name}'s log ---\n{p.tail()}")
                raise

    def m1(self, stack: str) -> dict[str, float]:
        """Fan-out: see ``driver.fan_out`` (seconds, milliseconds, job counts)."""
        s = self.sizes
        with self.serve(stack) as (base, _, _):
            return driver.fan_out(
                base, self.upstream, s.m1_jobs, s.m1_call_ms, s.m1_lead_s, s.m1_timeout_s,
                s.m1_quiet_s,
            )  # fmt: skip

    def m6(self, stack: str) -> dict[str, float]:
        """M1 with more jobs on ``-w 1`` and ``-w 2``: does a second worker add capacity?

        Both on both CPUs, so the only difference is the second process.  Besides the
        makespan, the CPU time (user + system, ``/proc/<pid>/stat``) each worker spends
        from the moment the jobs are added to the last completion: planning, claiming,
        running and recording its runs.  ``cpu_s`` is the busiest worker's.
        """
        s = self.sizes
        figures: dict[str, float] = {}
        for workers in (1, 2):
            with self.serve(stack, workers=workers) as (base, proc, _):
                pids = procs.workers(proc.pid)
                if len(pids) != workers:
                    raise RuntimeError(f"found worker processes {pids}, not {workers}")
                before: dict[int, float] = {}

                def added(pids: list[int] = pids, before: dict[int, float] = before) -> None:
                    before.update({pid: procs.cpu_seconds(pid) for pid in pids})

                result = driver.fan_out(
                    base, self.upstream, s.m6_jobs, s.m1_call_ms, s.m6_lead_s, s.m1_timeout_s,
                    s.m1_quiet_s, on_added=added,
                )  # fmt: skip
                cpu = [procs.cpu_seconds(pid) - before[pid] for pid in pids]
            result |= {"cpu_s": max(cpu), "cpu_sum_s": sum(cpu)}
            figures |= {f"w{workers}_{key}": value for key, value in result.items()}
        return figures

    def m2(self, stack: str) -> dict[str, float]:
        """Periodic jobs idle (``idle_*``), then under M4's load (``load_*``, loop stacks
        only): see ``driver.periodic``."""
        s = self.sizes
        has_loop = stack in LOOP_STACKS
        with self.serve(stack) as (base, _, _):
            figures = {
                f"idle_{k}": v
                for k, v in driver.periodic(
                    base, self.upstream, s.m2_jobs, s.m2_runs, s.m2_call_ms, s.m2_lead_s,
                    lag=has_loop,
                ).items()
            }  # fmt: skip
            if has_loop:
                loaded = driver.periodic(
                    base, self.upstream, s.m2_jobs, s.m2_runs, s.m2_call_ms, s.m2_lead_s,
                    load_url=f"{base}/bench/sync", load_connections=s.m4_clients,
                )  # fmt: skip
                figures |= {f"load_{k}": v for k, v in loaded.items()}
            return figures

    def m3(self, stack: str) -> dict[str, float]:
        """Async route awaiting a 100 ms upstream call, at each client count in turn on
        one server: req/s and latency in ms, keys suffixed with the count (``rps_1000``)."""
        figures: dict[str, float] = {}
        with self.serve(stack) as (base, _, _):
            for clients in self.sizes.m3_clients:
                load = driver.route_load(f"{base}/bench/async", clients, self.sizes.m3_seconds)
                figures |= {f"{key}_{clients}": value for key, value in load.items()}
        return figures

    def m4(self, stack: str) -> dict[str, float]:
        """Sync route returning "ok": req/s and latency in ms."""
        with self.serve(stack) as (base, _, _):
            return driver.route_load(
                f"{base}/bench/sync", self.sizes.m4_clients, self.sizes.m4_seconds
            )

    def m5(self, stack: str) -> dict[str, float]:
        """Startup (s) with many stored jobs, peak RSS (MB), then M2 with them loaded."""
        s = self.sizes
        env: dict[str, str] = {}
        database = self.workdir / f"m5-{next(self._serial)}.db"
        if stack in MEMORY_STACKS:
            env["BENCH_STORED_JOBS"] = str(s.m5_stored)
        else:
            # The stored jobs plus M2's are above the default ASYNCAPP_MAX_JOBS
            # (10,000); an operator who keeps this many raises it the same way.
            env["ASYNCAPP_MAX_JOBS"] = str(s.m5_stored + s.m2_jobs)
            with (
                self.serve(stack, env=env, database=database) as (base, _, _),
                httpx.Client(timeout=600.0) as client,
            ):
                client.post(f"{base}/bench/stored?n={s.m5_stored}").raise_for_status()
        with self.serve(stack, env=env, database=database) as (base, proc, startup):
            figures = driver.periodic(
                base, self.upstream, s.m2_jobs, s.m5_runs, s.m2_call_ms, s.m2_lead_s,
                lag=stack in LOOP_STACKS,
            )  # fmt: skip
            largest, total = procs.peak_rss_mb(proc.pid)
        return {"startup_s": startup, "rss_mb": largest, "rss_tree_mb": total, **figures}


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_all(
    bench: Bench, metrics: list[str], stacks: list[str], runs: int
) -> list[dict[str, dict[str, Any]]]:
    """results[run][metric][stack] = figures, or {"error": ...} if that measurement failed."""
    measure: dict[str, Callable[[str], dict[str, float]]] = {
        "M1": bench.m1, "M2": bench.m2, "M3": bench.m3, "M4": bench.m4, "M5": bench.m5,
        "M6": bench.m6,
    }  # fmt: skip
    results: list[dict[str, dict[str, Any]]] = []
    for run in range(runs):
        # Rotate the stack order each run so no stack always goes first on a warm machine.
        order = stacks[run % len(stacks) :] + stacks[: run % len(stacks)]
        per_run: dict[str, dict[str, Any]] = {}
        for metric in metrics:
            per_run[metric] = {}
            for stack in (s for s in order if s in METRIC_STACKS[metric]):
                began = time.monotonic()
                try:
                    figures: dict[str, Any] = measure[metric](stack)
                except Exception as exc:  # one failure must not end the bench
                    figures = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
                    traceback.print_exc()
                if late := [k for k, v in figures.items() if k.endswith("setup_late_s") and v]:
                    # Jobs were still being added at their due time: lateness and
                    # makespan then measure the setup, not the scheduler.
                    _progress(f"warning: {metric} {stack}: {', '.join(late)} > 0, run not valid")
                per_run[metric][stack] = figures
                _progress(
                    f"run {run + 1}/{runs} {metric} {stack} ({time.monotonic() - began:.0f} s): "
                    + report.brief(figures)
                )
        results.append(per_run)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--runs", type=int, default=None, help="runs per metric (default 3; 1 with --quick)"
    )
    parser.add_argument("--quick", action="store_true", help="short smoke mode, under 2 minutes")
    parser.add_argument("--only", default=",".join(METRICS), help="metrics, e.g. M1,M3")
    parser.add_argument("--stacks", default=",".join(STACKS), help="stacks, e.g. asyncapp,ceiling")
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON results file")
    parser.add_argument(
        "--keep", type=Path, default=None, help="keep server logs and databases in this directory"
    )
    args = parser.parse_args(argv)
    metrics = [m.strip().upper() for m in args.only.split(",") if m.strip()]
    stacks = [s.strip() for s in args.stacks.split(",") if s.strip()]
    if bad := [m for m in metrics if m not in METRICS] + [s for s in stacks if s not in STACKS]:
        parser.error(f"unknown metric or stack: {', '.join(bad)}")
    runs = args.runs or (1 if args.quick else 3)
    sizes = QUICK if args.quick else FULL
    procs.require_tools()
    if (files := procs.raise_open_files_limit()) < 2 * max(sizes.m3_clients) + 200:
        _progress(f"note: only {files} open files allowed; M3's largest client count may fail")
    os.sched_setaffinity(0, {procs.LOAD_CPU})
    began, load_before = time.time(), os.getloadavg()[0]
    if load_before > 0.5:
        _progress(f"note: 1-min load average is {load_before:.1f} before starting; expect noise")
    with contextlib.ExitStack() as scope:
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
            workdir = args.keep
        else:
            workdir = Path(scope.enter_context(tempfile.TemporaryDirectory(prefix="bench-")))
        port = procs.free_port()
        upstream_cmd = [sys.executable, "-m", "bench.upstream", "--port", str(port)]
        with procs.running("upstream", upstream_cmd, procs.LOAD_CPU, workdir) as upstream_proc:
            upstream = f"http://127.0.0.1:{port}"
            procs.wait_ready(upstream_proc, f"{upstream}/delay?ms=0")
            results = run_all(Bench(sizes, workdir, upstream), metrics, stacks, runs)
    document: dict[str, Any] = {
        "meta": {
            "started": datetime.fromtimestamp(began, UTC).isoformat(),
            "seconds": round(time.time() - began, 1),
            "loadavg_1min_before_after": [load_before, os.getloadavg()[0]],
            "runs": runs,
            "quick": args.quick,
            "metrics": metrics,
            "stacks": stacks,
            "sizes": asdict(sizes),
        },
        "runs": results,
    }
    document |= report.summarize(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=2, allow_nan=True))
    print(report.render(document))
    print(f"\nwrote {args.out} in {document['meta']['seconds']} s")
    return 0
