"""Prometheus metrics, with prometheus-client.

Every metric an operator may alert on, in one place.  Run metrics are labelled
by the job's *function* (``myjobs:poll``), not by job id: ids are unbounded
(one-shot jobs get a new one each), and every label set costs memory and, for
histograms, about 300 us to create on the loop; which job did what is in the
run history.  ``GET /metrics`` serves
them in the Prometheus text format (behind the API token unless
``ASYNCAPP_METRICS_PUBLIC`` opens it).

Several workers of one Hypercorn on one machine are separate processes, and a
scrape reaches one of them.  Set ``PROMETHEUS_MULTIPROC_DIR`` to an empty
directory writable by the workers (prometheus-client's multiprocess mode) and
every worker writes its metrics there and serves the sum of all of them;
gauges say how they combine (``livesum``: the live processes' values added;
``max``).  Clear the directory when the server starts (``rm -rf`` it in the
start script), as prometheus-client requires.  Several machines are scraped
one by one, as usual; ``node`` labels nothing here, because Prometheus adds
``instance`` itself.
"""

from __future__ import annotations

import math
import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))

#: Seconds; from 5 ms to 30 minutes.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)
#: Seconds late a run started; sub-millisecond to a minute.
LATENESS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5, 60)
#: Seconds the event loop was late; 1 ms to 5 s.
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5)

RUNS = Counter("asyncapp_runs", "Runs that ended, by job function and status", ["func", "status"])
MISSED = Counter(
    "asyncapp_missed_runs",
    "Scheduled times that did not run, by job function and reason",
    ["func", "reason"],
)
RETRIES = Counter("asyncapp_retries", "Attempts that failed and were retried", ["func"])
DURATION = Histogram(
    "asyncapp_run_duration_seconds", "How long runs took", ["func"], buckets=DURATION_BUCKETS
)
LATENESS = Histogram(
    "asyncapp_run_start_lateness_seconds",
    "How late runs started after their scheduled time (claim, queue and loop waits)",
    ["func"],
    buckets=LATENESS_BUCKETS,
)
RUNNING = Gauge(
    "asyncapp_runs_in_progress", "Runs in progress in this process", multiprocess_mode="livesum"
)
CLAIMS_ATTEMPTED = Counter(
    "asyncapp_claims_attempted",
    "Scheduled times this process tried to claim: of its share, or swept from another",
    ["path"],
)
CLAIMS_LOST = Counter(
    "asyncapp_claims_lost",
    "Scheduled times another process claimed first (a sweep racing a late owner, a re-shard)",
)
LOOP_LAG = Histogram(
    "asyncapp_event_loop_lag_seconds",
    "How late the event loop ran a callback due now, sampled continuously",
    buckets=LAG_BUCKETS,
)
LOOP_HELD = Counter(
    "asyncapp_event_loop_held",
    "Times something held the event loop longer than ASYNCAPP_LOOP_LAG_THRESHOLD",
    ["by"],
)
HTTP_REQUESTS = Counter(
    "asyncapp_http_client_requests",
    "Requests of the shared HTTP client, by host and status class (error: no response)",
    ["host", "status"],
)
LIVE_PROCESSES = Gauge(
    "asyncapp_live_processes",
    "Processes with a fresh heartbeat in the database, as this process last saw",
    multiprocess_mode="max",
)
DATABASE_UP = Gauge(
    "asyncapp_database_up",
    "1 when this process's last database operation succeeded",
    multiprocess_mode="min",
)


def render() -> tuple[bytes, str]:
    """The metrics of this process (or of every worker, in multiprocess mode)."""
    if MULTIPROCESS:
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def status_class(code: int | None) -> str:
    """``2xx`` ... ``5xx``, or ``error`` when there was no response."""
    return "error" if code is None else f"{code // 100}xx"


def loop_lag_summary() -> dict[str, float] | None:
    """This process's event-loop lag since it started, from :data:`LOOP_LAG`.

    ``{"samples": n, "mean": seconds, "p99_under": seconds}``: ``p99_under`` is
    the smallest bucket bound that 99% of the samples are under (``inf`` past
    the last bucket).  None before the first sample.  Reads the histogram's
    counters only: cheap enough for every page view.
    """
    count = total = 0.0
    buckets: list[tuple[float, float]] = []
    for metric in LOOP_LAG.collect():
        for sample in metric.samples:
            if sample.name.endswith("_count"):
                count = sample.value
            elif sample.name.endswith("_sum"):
                total = sample.value
            elif sample.name.endswith("_bucket"):
                buckets.append((float(sample.labels["le"]), sample.value))
    if not count:
        return None
    p99 = next((bound for bound, below in sorted(buckets) if below >= 0.99 * count), math.inf)
    return {"samples": count, "mean": total / count, "p99_under": p99}
