"""Measurements against a running stack, made from the bench process on the load CPU.

Each function returns a flat dict of figures; the key suffix names the unit
(``_s`` seconds, ``_ms`` milliseconds, ``_rps`` requests per second).
"""

from __future__ import annotations

import math
import re
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext

import httpx

from bench.procs import LOAD_CPU
from bench.stats import percentile

WRK_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _tag(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _post(client: httpx.Client, url: str, timeout: float = 120.0) -> dict[str, object]:
    response = client.post(url, timeout=timeout)
    response.raise_for_status()
    return dict(response.json())


def _ms(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value).groups()  # type: ignore[union-attr]
    return float(number) * WRK_UNITS[unit]


def wrk_command(url: str, connections: int, seconds: float) -> list[str]:
    """wrk on the load CPU, one thread, latency percentiles, 10 s request timeout."""
    return [
        "taskset", "-c", str(LOAD_CPU), "wrk", "-t1", f"-c{connections}",
        f"-d{max(1, round(seconds))}s", "--timeout", "10s", "--latency", url,
    ]  # fmt: skip


def parse_wrk(output: str) -> dict[str, float]:
    """Requests/s, latency p50/p99 (ms) and failed requests from ``wrk --latency`` output."""
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    done = re.search(r"(\d+) requests in", output)
    p50 = re.search(r"^\s+50%\s+(\S+)", output, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", output, re.M)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    sock = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    answered = bool(done and int(done.group(1)))  # else wrk prints latencies of 0
    return {
        "rps": float(rps.group(1)) if rps else math.nan,
        "p50_ms": _ms(p50.group(1)) if p50 and answered else math.nan,
        "p99_ms": _ms(p99.group(1)) if p99 and answered else math.nan,
        "errors": (int(non2xx.group(1)) if non2xx else 0)
        + (sum(int(g) for g in sock.groups()) if sock else 0),
    }


def route_load(url: str, connections: int, seconds: float) -> dict[str, float]:
    """M3/M4: ``connections`` keep-alive clients hammering ``url`` for ``seconds``."""
    done = subprocess.run(
        wrk_command(url, connections, seconds),
        capture_output=True,
        text=True,
        timeout=seconds + 30,
        check=True,
    )
    return parse_wrk(done.stdout)


@contextmanager
def background_load(url: str, connections: int, seconds: float) -> Iterator[None]:
    """Run wrk against ``url`` in the background while the block runs (M2 under load)."""
    proc = subprocess.Popen(
        wrk_command(url, connections, seconds),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        proc.kill()
        proc.wait(5)


def fan_out(
    stack: str,
    upstream: str,
    jobs: int,
    call_ms: int,
    lead_s: float,
    timeout_s: float,
    quiet_s: float,
    on_added: Callable[[], None] | None = None,
) -> dict[str, float]:
    """M1: ``jobs`` one-shot jobs due at one instant, each a ``call_ms`` upstream call.

    Figures: makespan_s (due time -> last upstream completion), lateness p50/p99
    (upstream arrival - due time), done (distinct jobs completed),
    healthz_ms (GET /healthz sent as soon as the upstream saw the last completion),
    setup_late_s (> 0 means scheduling took longer than the lead time: invalid run).
    Waits for every completion, for ``timeout_s``, or until ``quiet_s`` passed
    without one, whichever comes first.  ``on_added`` is called once the jobs are
    added, before the due time (M6 reads the workers' CPU time there).
    """
    tag = _tag("m1")
    with httpx.Client(timeout=timeout_s + 10) as client:
        due = time.time() + lead_s
        _post(client, f"{stack}/bench/oneshot?n={jobs}&at={due}&ms={call_ms}&tag={tag}")
        setup_late = time.time() - due
        if on_added is not None:
            on_added()
        client.get(f"{upstream}/wait?tag={tag}&count={jobs}&timeout={timeout_s}&quiet={quiet_s}")
        before = time.perf_counter()
        client.get(f"{stack}/healthz").raise_for_status()
        healthz_ms = (time.perf_counter() - before) * 1000.0
        data = client.get(f"{upstream}/dump?tag={tag}").json()
    lateness_ms = [(a - due) * 1000.0 for a in data["arrival"]]
    return {
        "makespan_s": max(data["completion"], default=math.nan) - due,
        "lateness_first_ms": min(lateness_ms, default=math.nan),
        "lateness_p50_ms": percentile(lateness_ms, 50),
        "lateness_p99_ms": percentile(lateness_ms, 99),
        "done": len(set(data["job"])),
        "expected": jobs,
        "healthz_ms": healthz_ms,
        "setup_late_s": max(0.0, setup_late),
    }


def periodic(
    stack: str,
    upstream: str,
    jobs: int,
    runs: int,
    call_ms: int,
    lead_s: float,
    load_url: str | None = None,
    load_connections: int = 32,
    lag: bool = True,
) -> dict[str, float]:
    """M2: ``jobs`` interval jobs every 1 s, staggered by 1/jobs s, ``runs`` runs each.

    Run k of job j is due at start + j/jobs + k. Figures: runs (distinct (j, k) seen
    by the upstream, of ``expected``), lateness p50/p99 in ms, loop lag p50/p99/max
    in ms measured in the server during the window (NaN without a loop), and the
    window's extra runs (duplicates). With ``load_url``, wrk drives it meanwhile.
    """
    tag = _tag("m2")
    with httpx.Client(timeout=120.0) as client:
        start = time.time() + lead_s
        _post(client, f"{stack}/bench/interval?n={jobs}&start={start}&runs={runs}"
                      f"&ms={call_ms}&tag={tag}")  # fmt: skip
        setup_late = time.time() - start
        time.sleep(max(0.0, start - time.time()))
        if lag:
            _post(client, f"{stack}/bench/lag?seconds={runs}")
        load = background_load(load_url, load_connections, runs + 1) if load_url else None
        with load or nullcontext():
            time.sleep(max(0.0, start + runs - time.time()))
        lag_summary = client.get(f"{stack}/bench/lag").json() if lag else {}
        time.sleep(1.0 + call_ms / 1000.0)
        data = client.get(f"{upstream}/dump?tag={tag}").json()
    seen: set[tuple[int, int]] = set()
    lateness_ms: list[float] = []
    for job, arrival in zip(data["job"], data["arrival"], strict=True):
        first = start + job / jobs
        k = math.floor(arrival - first + 0.1)
        if 0 <= k < runs:
            seen.add((job, k))
            lateness_ms.append((arrival - first - k) * 1000.0)
    return {
        "runs": len(seen),
        "expected": jobs * runs,
        "duplicates": len(data["job"]) - len(seen),
        "lateness_p50_ms": percentile(lateness_ms, 50),
        "lateness_p99_ms": percentile(lateness_ms, 99),
        "lag_p50_ms": float(lag_summary.get("p50_ms", math.nan)),
        "lag_p99_ms": float(lag_summary.get("p99_ms", math.nan)),
        "lag_max_ms": float(lag_summary.get("max_ms", math.nan)),
        "setup_late_s": max(0.0, setup_late),
    }
