"""The geometry of the dashboard's small run chart: bars in SVG user units.

For the recent runs of a job, oldest on the left, one panel of bars shows how
long each run took and another how late it started after its scheduled time.
Each panel has its own linear scale (durations are often seconds, lateness
milliseconds).  The template draws the bars as inline SVG, so the page needs
no script and no library to show it; :attr:`Chart.summary` says the same in
words for readers who cannot see the chart.

Pure computation: no I/O, no Flask.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from asyncapp.constants import ERROR, INTERRUPTED, TIMEOUT, UNKNOWN
from asyncapp.faces.humanize import format_duration

WIDTH = 600
PANEL_HEIGHT = 60
#: Room above a panel for its title, which the stylesheet draws up to 20 units tall
#: (legible when a phone shrinks the chart to 60 % of its width).
TITLE_SPACE = 24
GAP = 14
#: The widest bar, so that a few runs do not look like a wall.
BAR_MAX = 24.0
FAILED = frozenset({ERROR, TIMEOUT, INTERRUPTED, UNKNOWN})


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    #: What the bar stands for, shown as its tooltip (SVG ``<title>``).
    label: str
    failed: bool


@dataclass(frozen=True)
class Panel:
    title: str
    #: The top of the panel's plot area and its baseline, in user units.
    top: float
    bottom: float
    #: The value at the top of the scale, in words.
    scale: str
    bars: list[Bar]


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    panels: list[Panel]
    summary: str


def run_chart(runs: Sequence[Mapping[str, Any]]) -> Chart | None:
    """The chart of ``runs`` (run dicts as the run history gives them, newest first).

    Runs that never started (missed records) and runs still going have no
    duration and are left out.  None when no run is left to draw.
    """
    points = []
    for run in reversed(runs):
        started, ended = _moment(run.get("started_at")), _moment(run.get("ended_at"))
        scheduled = _moment(run.get("scheduled_for"))
        if started is None or ended is None:
            continue
        duration = max(0.0, (ended - started).total_seconds())
        late = max(0.0, (started - scheduled).total_seconds()) if scheduled else 0.0
        points.append((run, duration, late))
    if not points:
        return None
    durations = [duration for _, duration, _ in points]
    lateness = [late for _, _, late in points]
    panels = [
        _panel("Duration", durations, points, 0),
        _panel("Start lateness", lateness, points, 1),
    ]
    summary = (
        f"Last {len(points)} finished runs: duration median {_median(durations)}, "
        f"max {format_duration(max(durations))}; start lateness median {_median(lateness)}, "
        f"max {format_duration(max(lateness))}."
    )
    height = int(panels[-1].bottom) + 4
    return Chart(width=WIDTH, height=height, panels=panels, summary=summary)


Point = tuple[Mapping[str, Any], float, float]  # a run, its duration, its lateness


def _panel(title: str, values: list[float], points: list[Point], index: int) -> Panel:
    top = index * (PANEL_HEIGHT + TITLE_SPACE + GAP) + TITLE_SPACE
    bottom = top + PANEL_HEIGHT
    highest = max(values)
    slot = WIDTH / max(len(values), 1)
    width = min(max(1.0, slot * 0.7), BAR_MAX)
    bars = []
    for position, (value, (run, _, _)) in enumerate(zip(values, points, strict=True)):
        height = PANEL_HEIGHT * value / highest if highest > 0 else 0.0
        if value > 0:
            height = max(height, 1.0)  # a value too small to see still shows
        status = str(run.get("status"))
        bars.append(
            Bar(
                x=round(position * slot + (slot - width) / 2, 2),
                y=round(bottom - height, 2),
                width=round(width, 2),
                height=round(height, 2),
                label=f"{title.lower()} {format_duration(value)}, {status}, "
                f"scheduled {run.get('scheduled_for')}",
                failed=status in FAILED,
            )
        )
    return Panel(title=title, top=top, bottom=bottom, scale=format_duration(highest), bars=bars)


def _median(values: list[float]) -> str:
    return format_duration(statistics.median(values))


def _moment(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value))
    except ValueError:
        return None
