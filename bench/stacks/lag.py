"""Event-loop lag probe for the stacks that run on an asyncio loop."""

from __future__ import annotations

import asyncio
import time

from bench.stats import percentile

PROBE_INTERVAL_S = 0.010


class LagProbe:
    """Sleeps 10 ms repeatedly on the running loop and records each overshoot.

    The overshoot (actual sleep - 10 ms) is how long ready callbacks waited behind
    whatever else held the loop: the event-loop lag, in seconds.
    """

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._task: asyncio.Task[None] | None = None

    def start(self, seconds: float) -> None:
        """Forget old samples and probe the running loop for ``seconds``."""
        if self._task is not None:
            self._task.cancel()
        self.samples = []
        self._task = asyncio.get_running_loop().create_task(self._run(seconds))

    async def _run(self, seconds: float) -> None:
        for _ in range(int(seconds / PROBE_INTERVAL_S)):
            before = time.perf_counter()
            await asyncio.sleep(PROBE_INTERVAL_S)
            self.samples.append(time.perf_counter() - before - PROBE_INTERVAL_S)

    def summary(self) -> dict[str, float]:
        """Lag p50, p99 and max in milliseconds, and the sample count."""
        ms = [s * 1000.0 for s in self.samples]
        return {
            "p50_ms": percentile(ms, 50),
            "p99_ms": percentile(ms, 99),
            "max_ms": max(ms, default=float("nan")),
            "samples": len(ms),
        }
