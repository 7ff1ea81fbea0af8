"""Medians over runs, same-run ratios, targets with PASS/FAIL, and the printed table."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench.stats import median

Run = dict[str, dict[str, Any]]

#: M3's client counts; its figures are keyed ``rps_100``, ``p99_ms_1000``, ...
M3_CLIENTS = (100, 400, 1000)

#: What the table shows per metric: (field, label). Units are in the labels.
FIELDS: dict[str, list[tuple[str, str]]] = {
    "M1": [
        ("makespan_s", "makespan s"),
        ("lateness_first_ms", "first start late ms"),
        ("lateness_p50_ms", "start lateness p50 ms"),
        ("lateness_p99_ms", "start lateness p99 ms"),
        ("done", "jobs done"),
        ("healthz_ms", "/healthz after ms"),
    ],
    "M2": [
        (f"{mode}_{field}", f"{mode}: {label}")
        for mode in ("idle", "load")
        for field, label in (
            ("runs", "runs seen"),
            ("lateness_p50_ms", "lateness p50 ms"),
            ("lateness_p99_ms", "lateness p99 ms"),
            ("lag_p99_ms", "loop lag p99 ms"),
            ("lag_max_ms", "loop lag max ms"),
        )
    ],
    "M3": [
        (f"{field}_{clients}", f"{clients} clients: {label}")
        for clients in M3_CLIENTS
        for field, label in (("rps", "req/s"), ("p99_ms", "p99 ms"), ("errors", "errors"))
    ],
    "M4": [("rps", "req/s"), ("p50_ms", "p50 ms"), ("p99_ms", "p99 ms"), ("errors", "errors")],
    "M5": [
        ("startup_s", "startup s"),
        ("rss_mb", "peak RSS MB (worker)"),
        ("rss_tree_mb", "peak RSS MB (process tree)"),
        ("runs", "runs seen"),
        ("lateness_p99_ms", "lateness p99 ms"),
        ("lag_p99_ms", "loop lag p99 ms"),
    ],
    "M6": [
        (f"w{workers}_{field}", f"-w {workers}: {label}")
        for workers in (1, 2)
        for field, label in (
            ("makespan_s", "makespan s"),
            ("cpu_s", "CPU s (busiest worker)"),
            ("done", "jobs done"),
        )
    ],
}
STACK_COLUMNS = ("asyncapp", "quart", "seed", "ceiling")


def _get(run: Run, metric: str, stack: str, field: str) -> float:
    value = run.get(metric, {}).get(stack, {}).get(field)
    return float(value) if isinstance(value, int | float) else math.nan


def _ratio(run: Run, metric: str, field: str, top: str, bottom: str) -> float:
    """top / bottom; infinite when bottom is 0 and top is not (e.g. no request answered)."""
    numerator, denominator = _get(run, metric, top, field), _get(run, metric, bottom, field)
    if denominator == 0:
        return math.inf if numerator > 0 else math.nan
    return numerator / denominator


def _share(run: Run, metric: str, prefix: str = "") -> float:
    """Runs done / runs expected for asyncapp (1.0 = all)."""
    done = _get(run, metric, "asyncapp", f"{prefix}{'done' if metric == 'M1' else 'runs'}")
    return done / _get(run, metric, "asyncapp", f"{prefix}expected")


@dataclass(frozen=True)
class Target:
    """One target the bench judges: a per-run value, combined over runs, and a threshold."""

    metric: str
    text: str
    value: Callable[[Run], float]
    passes: Callable[[float], bool]
    worst_run: bool = False  # True: judge the worst run (counts), else the median


def _periodic_targets(mode: str) -> list[Target]:
    """M2's targets for ``mode`` ("idle" or "load", i.e. while M4's load runs)."""
    return [
        Target("M2", f"{mode}: asyncapp runs seen / expected = 1",
               lambda r: _share(r, "M2", f"{mode}_"), lambda v: v >= 1, worst_run=True),
        Target("M2", f"{mode}: lateness p99 asyncapp/ceiling <= 2",
               lambda r: _ratio(r, "M2", f"{mode}_lateness_p99_ms", "asyncapp", "ceiling"),
               lambda v: v <= 2),
        Target("M2", f"{mode}: asyncapp loop lag p99 <= 10 ms",
               lambda r: _get(r, "M2", "asyncapp", f"{mode}_lag_p99_ms"), lambda v: v <= 10),
    ]  # fmt: skip


TARGETS = [
    Target("M1", "makespan asyncapp/ceiling <= 1.5",
           lambda r: _ratio(r, "M1", "makespan_s", "asyncapp", "ceiling"), lambda v: v <= 1.5),
    Target("M1", "makespan seed/asyncapp >= 25",
           lambda r: _ratio(r, "M1", "makespan_s", "seed", "asyncapp"), lambda v: v >= 25),
    Target("M1", "asyncapp jobs done / expected = 1",
           lambda r: _share(r, "M1"), lambda v: v >= 1, worst_run=True),
    Target("M1", "first start asyncapp - ceiling <= 200 ms",
           lambda r: _get(r, "M1", "asyncapp", "lateness_first_ms")
           - _get(r, "M1", "ceiling", "lateness_first_ms"),
           lambda v: v <= 200),
    Target("M1", "asyncapp /healthz right after <= 50 ms",
           lambda r: _get(r, "M1", "asyncapp", "healthz_ms"), lambda v: v <= 50),
    *_periodic_targets("idle"),
    *_periodic_targets("load"),
    Target("M3", "100 clients: req/s asyncapp/ceiling >= 0.9",
           lambda r: _ratio(r, "M3", "rps_100", "asyncapp", "ceiling"), lambda v: v >= 0.9),
    Target("M3", "1000 clients: req/s asyncapp/ceiling >= 0.8",
           lambda r: _ratio(r, "M3", "rps_1000", "asyncapp", "ceiling"), lambda v: v >= 0.8),
    Target("M3", "1000 clients: p99 asyncapp/ceiling <= 1.5",
           lambda r: _ratio(r, "M3", "p99_ms_1000", "asyncapp", "ceiling"), lambda v: v <= 1.5),
    Target("M3", "1000 clients: req/s asyncapp/quart >= 2",
           lambda r: _ratio(r, "M3", "rps_1000", "asyncapp", "quart"), lambda v: v >= 2),
    Target("M3", "1000 clients: req/s asyncapp/seed >= 2",
           lambda r: _ratio(r, "M3", "rps_1000", "asyncapp", "seed"), lambda v: v >= 2),
    Target("M4", "req/s asyncapp/seed >= 1.0",
           lambda r: _ratio(r, "M4", "rps", "asyncapp", "seed"), lambda v: v >= 1.0),
    Target("M4", "req/s asyncapp/quart >= 1.0",
           lambda r: _ratio(r, "M4", "rps", "asyncapp", "quart"), lambda v: v >= 1.0),
    Target("M5", "asyncapp startup <= 3 s",
           lambda r: _get(r, "M5", "asyncapp", "startup_s"), lambda v: v <= 3),
    Target("M5", "asyncapp peak RSS (worker) <= 150 MB",
           lambda r: _get(r, "M5", "asyncapp", "rss_mb"), lambda v: v <= 150),
    Target("M6", "makespan -w 2 / -w 1 <= 0.7",
           lambda r: _get(r, "M6", "asyncapp", "w2_makespan_s")
           / _get(r, "M6", "asyncapp", "w1_makespan_s"),
           lambda v: v <= 0.7),
    Target("M6", "CPU per worker -w 2 / -w 1 <= 0.6",
           lambda r: _get(r, "M6", "asyncapp", "w2_cpu_s")
           / _get(r, "M6", "asyncapp", "w1_cpu_s"),
           lambda v: v <= 0.6),
    Target("M6", "jobs done with -w 2 / expected = 1",
           lambda r: _get(r, "M6", "asyncapp", "w2_done")
           / _get(r, "M6", "asyncapp", "w2_expected"),
           lambda v: v >= 1, worst_run=True),
]  # fmt: skip


def summarize(runs: list[Run]) -> dict[str, Any]:
    """``{"medians": {metric: {stack: {field: median}}}, "targets": [...]}``."""
    medians: dict[str, dict[str, dict[str, float]]] = {}
    for metric in sorted({m for run in runs for m in run}):
        stacks = sorted({s for run in runs for s in run.get(metric, {})})
        fields = sorted({f for run in runs for s in stacks for f in run[metric].get(s, {})})
        medians[metric] = {
            stack: {
                field: median([_get(run, metric, stack, field) for run in runs])
                for field in fields
                if field != "error"
            }
            for stack in stacks
        }
    targets = []
    for target in TARGETS:
        if not any(target.metric in run for run in runs):
            continue
        values = [target.value(run) for run in runs]
        # Infinite ratios count (nothing answered on one side); stats.median drops them.
        known = [v for v in values if not math.isnan(v)]
        combined = (
            (min(known) if target.worst_run else statistics.median(known)) if known else math.nan
        )
        verdict = "PASS" if known and target.passes(combined) else "FAIL"
        if not known:
            verdict = "N/A"
        targets.append(
            {"metric": target.metric, "target": target.text, "value": combined,
             "per_run": values, "verdict": verdict}
        )  # fmt: skip
    return {"medians": medians, "targets": targets}


def _fmt(value: float) -> str:
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if not math.isfinite(value):
        return "-"
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"


def brief(figures: dict[str, Any]) -> str:
    """One progress line for a measurement."""
    if "error" in figures:
        return f"ERROR {figures['error'].splitlines()[0]}"
    return ", ".join(f"{k}={_fmt(float(v))}" for k, v in figures.items() if k != "expected")


def render(document: dict[str, Any]) -> str:
    """The table of medians per metric and stack, then the targets."""
    meta, medians = document["meta"], document["medians"]
    lines = [
        f"asyncapp bench: medians of {meta['runs']} run(s)"
        + (" (QUICK sizes)" if meta["quick"] else ""),
        f"{'metric':<5} {'figure':<28}" + "".join(f"{s:>12}" for s in STACK_COLUMNS),
    ]
    for metric, rows in FIELDS.items():
        if metric not in medians:
            continue
        errors = {
            s for run in document["runs"] for s, f in run.get(metric, {}).items() if "error" in f
        }
        for field, label in rows:
            cells = [_fmt(medians[metric].get(s, {}).get(field, math.nan)) for s in STACK_COLUMNS]
            lines.append(f"{metric:<5} {label:<28}" + "".join(f"{c:>12}" for c in cells))
        if errors:
            lines.append(f"{metric:<5} errors in: {', '.join(sorted(errors))} (see JSON)")
    lines.append("")
    lines.append("targets (ratios computed within each run, then the median over runs):")
    for t in document["targets"]:
        lines.append(f"  {t['verdict']:<4} {t['metric']} {t['target']:<46} {_fmt(t['value'])}")
    return "\n".join(lines)
