"""The third-party internals asyncapp relies on are still there (asyncapp/compat.py)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from apscheduler.triggers.interval import IntervalTrigger

from asyncapp import compat


def test_every_internal_named_in_compat_is_still_there() -> None:
    assert compat.missing() == []


async def test_current_tasks_sees_the_running_task() -> None:
    assert compat.current_tasks()[asyncio.get_running_loop()] is asyncio.current_task()


def test_apply_jitter_moves_a_time_by_at_most_the_jitter() -> None:
    trigger = IntervalTrigger(seconds=10, timezone=UTC)
    moment = datetime(2027, 1, 1, tzinfo=UTC)
    moved = [compat.apply_jitter(trigger, moment, 5, moment) for _ in range(50)]
    assert all(moment <= m <= moment.replace(second=5) for m in moved)
    assert len(set(moved)) > 1
