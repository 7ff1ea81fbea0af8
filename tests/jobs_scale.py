"""Many jobs declared in code, written in one transaction at startup (``tests.test_scale``).

``SCALE_JOBS`` jobs ``s0``, ``s1``... fire every second ``SCALE_COUNT`` times from the
epoch second ``SCALE_START``, each appending a ``mark`` line labelled with its id to
``SCALE_MARKS``.  Adding them one by one through the API takes longer than the test's
lead when the machine is busy; declared, they are there before the server answers.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any

from asyncapp import task
from tests.jobs import _write_mark


def _declare(n: int, start: datetime, count: int, path: str) -> None:
    job_id = f"s{n}"

    async def body() -> None:
        _write_mark(path, job_id)

    body.__name__ = body.__qualname__ = f"scale_{n}"
    globals()[body.__name__] = body
    declare: Callable[[Callable[[], Coroutine[Any, Any, None]]], Any] = task(
        "interval",
        seconds=1,
        id=job_id,
        start_date=start.isoformat(),
        end_date=(start + timedelta(seconds=count - 0.5)).isoformat(),
    )
    declare(body)


if "SCALE_START" in os.environ:
    _start = datetime.fromtimestamp(float(os.environ["SCALE_START"]), UTC)
    for _n in range(int(os.environ["SCALE_JOBS"])):
        _declare(_n, _start, int(os.environ["SCALE_COUNT"]), os.environ["SCALE_MARKS"])
