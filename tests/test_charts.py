"""The run chart's geometry (asyncapp.faces.dashboard.charts)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from asyncapp.faces.dashboard.charts import BAR_MAX, PANEL_HEIGHT, run_chart

T0 = datetime(2026, 11, 26, 10, tzinfo=UTC)


def run(minute: int, duration: float, late: float, status: str = "success") -> dict[str, Any]:
    scheduled = T0 + timedelta(minutes=minute)
    started = scheduled + timedelta(seconds=late)
    return {
        "scheduled_for": scheduled.isoformat(),
        "started_at": started.isoformat(),
        "ended_at": (started + timedelta(seconds=duration)).isoformat(),
        "status": status,
    }


def test_bars_scale_to_the_largest_value_oldest_first() -> None:
    newest_first = [run(2, 4.0, 0.5, "error"), run(1, 1.0, 0.0), run(0, 2.0, 0.25)]
    chart = run_chart(newest_first)
    assert chart is not None
    duration, lateness = chart.panels
    assert [bar.height for bar in duration.bars] == [
        PANEL_HEIGHT / 2,
        PANEL_HEIGHT / 4,
        PANEL_HEIGHT,
    ]
    assert [bar.height for bar in lateness.bars] == [PANEL_HEIGHT / 2, 0, PANEL_HEIGHT]
    assert [bar.failed for bar in duration.bars] == [False, False, True]
    assert all(bar.y + bar.height == duration.bottom for bar in duration.bars)
    assert duration.bars[0].x < duration.bars[1].x < duration.bars[2].x
    assert all(bar.width <= BAR_MAX for bar in duration.bars)
    assert duration.scale == "4.00 s" and lateness.scale == "500 ms"
    assert "duration median 2.00 s, max 4.00 s" in chart.summary
    assert "start lateness median 250 ms, max 500 ms" in chart.summary


def test_tiny_values_stay_visible_and_unfinished_runs_are_left_out() -> None:
    missed = {"scheduled_for": "2026-11-26T10:00:00+00:00", "started_at": None,
              "ended_at": None, "status": "missed"}  # fmt: skip
    running = {**run(3, 1, 0), "ended_at": None, "status": "running"}
    chart = run_chart([running, run(1, 100.0, 0), run(0, 0.001, 0), missed])
    assert chart is not None
    assert len(chart.panels[0].bars) == 2
    assert chart.panels[0].bars[0].height == 1.0  # 0.001 s of 100 s: drawn 1 unit high
    assert run_chart([missed, running]) is None
