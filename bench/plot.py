"""Plot bench/results/latest.json as grouped bars: ``python -m bench.plot [--out PNG]``.

One panel per figure, bars for asyncapp, quart, seed and ceiling (medians over runs);
a missing bar means that stack was not measured.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from bench.run import RESULTS

REPO = Path(__file__).resolve().parent.parent
STACKS = ("asyncapp", "quart", "seed", "ceiling")
COLORS = {"asyncapp": "#1f77b4", "quart": "#2ca02c", "seed": "#d62728", "ceiling": "#7f7f7f"}
#: (metric, field, title, log scale)
PANELS = [
    ("M1", "makespan_s", "M1 fan-out makespan (s, log)", True),
    ("M2", "idle_lateness_p99_ms", "M2 start lateness p99, idle (ms)", False),
    ("M2", "load_lateness_p99_ms", "M2 start lateness p99, under M4 load (ms)", False),
    ("M3", "rps_100", "M3 async route, 100 clients (req/s)", False),
    ("M3", "rps_1000", "M3 async route, 1000 clients (req/s)", False),
    ("M3", "p99_ms_1000", "M3 async route, 1000 clients: p99 (ms, log)", True),
    ("M4", "rps", "M4 sync route (req/s)", False),
    ("M5", "startup_s", "M5 startup with stored jobs (s)", False),
]


def plot(results: Path, out: Path) -> None:
    """Draw the panels of ``results`` into the PNG file ``out``."""
    document = json.loads(results.read_text())
    medians = document["medians"]
    fig, axes = plt.subplots(2, 4, figsize=(17, 7))
    for ax, (metric, field, title, log) in zip(axes.flat, PANELS, strict=True):
        values = [medians.get(metric, {}).get(s, {}).get(field, math.nan) for s in STACKS]
        heights = [v if v is not None and math.isfinite(v) else 0.0 for v in values]
        bars = ax.bar(STACKS, heights, color=[COLORS[s] for s in STACKS])
        for bar, value in zip(bars, values, strict=True):
            if value is not None and math.isfinite(value):
                label = f"{value:,.0f}" if value >= 100 else f"{value:.3g}"
                top = (bar.get_x() + bar.get_width() / 2, bar.get_height())
                ax.annotate(label, top, ha="center", va="bottom", fontsize=9)
        if log and any(heights):
            ax.set_yscale("log")
        ax.set_title(title, fontsize=10)
    meta = document["meta"]
    fig.suptitle(
        f"asyncapp vs quart vs seed vs ceiling: medians of {meta['runs']} run(s)"
        + (" (quick sizes)" if meta["quick"] else "")
        + f", {meta['started'][:10]}"
    )
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "bench.png")
    args = parser.parse_args()
    plot(args.results, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
