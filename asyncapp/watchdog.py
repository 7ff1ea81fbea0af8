"""The event-loop watchdog: lag measured all the time, and who held the loop named.

Requests, jobs and the scheduler share one event loop, so one ``time.sleep``
in an ``async def`` job delays everything.  A task on the loop wakes every
few milliseconds and records how late it woke (the lag histogram of
``/metrics``).  A thread beside it notices when that task has not run for
longer than ``ASYNCAPP_LOOP_LAG_THRESHOLD`` (default 100 ms): the loop is held.
It then reads, from the loop thread's current frame (``sys._current_frames``)
and the loop's current task, *what* holds it: a job run (which job, which
run) or a request (its method and path), and the line of code it is on.
When the loop is free again, one warning says it all::

    the event loop was held for 0.512 s by job slow run 6f1c... at myjobs.py:12 in slow
    (time.sleep(0.5)); everything on this process waited

and ``asyncapp_event_loop_held{by="job"}`` counts it.  A thread is the only
observer that still runs while the loop is held; it only reads, it never
touches the loop's objects.  It reads ``asyncio.tasks._current_tasks`` (the dict
``asyncio.current_task`` reads) through :func:`asyncapp.compat.current_tasks`.
"""

from __future__ import annotations

import asyncio
import collections
import linecache
import logging
import os
import sys
import sysconfig
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

from asyncapp import compat, metrics

log = logging.getLogger("asyncapp.watchdog")

#: Directories of code that is never the culprit itself (the standard library
#: and asyncapp's plumbing): the line reported is the innermost frame outside them.
_QUIET = tuple(
    os.path.normpath(path) + os.sep
    for path in {sysconfig.get_paths()["stdlib"], os.path.dirname(__file__)}
)


class Watchdog:
    """Samples loop lag on the loop; a thread names what holds the loop too long."""

    def __init__(
        self,
        threshold: float,
        describe: Callable[[asyncio.Task[Any] | None], tuple[str, str]],
    ) -> None:
        #: Seconds the loop may be held before it is reported.
        self.threshold = threshold
        #: (kind, description) of a task: ("job", "job x run y"), ("request", "GET /p")...
        self.describe = describe
        self.tick = min(threshold / 4, 0.025)
        self.held = 0  # episodes reported
        self._beat = time.monotonic()
        self._stop = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._task: asyncio.Task[None] | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._beat = time.monotonic()
        self._task = self._loop.create_task(self._sample(), name="asyncapp-watchdog")
        self._thread = threading.Thread(target=self._watch, name="asyncapp-watchdog", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 1.0)

    async def _sample(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            began = loop.time()
            await asyncio.sleep(self.tick)
            metrics.LOOP_LAG.observe(max(0.0, loop.time() - began - self.tick))
            self._beat = time.monotonic()

    def _watch(self) -> None:
        while not self._stop.wait(self.threshold / 2):
            if time.monotonic() - self._beat <= self.threshold:
                continue
            began = self._beat
            seen = [self._culprit()]
            while not self._stop.wait(self.tick) and self._beat == began:
                seen.append(self._culprit())  # still held: by the same code?
            if self._stop.is_set():
                return
            held = time.monotonic() - began - self.tick
            self.held += 1
            self._report(held, seen)

    def _report(self, held: float, seen: list[tuple[str, str, str]]) -> None:
        counts = collections.Counter(what for _, what, _ in seen)
        top, hits = counts.most_common(1)[0]
        kind, culprit, where = next(sample for sample in seen if sample[1] == top)
        # One culprit in (nearly) every sample: it held the loop; the first or last
        # sample may catch what ran just before or after it.
        if hits >= max(1, len(seen) - 2):
            metrics.LOOP_HELD.labels(kind).inc()
            log.warning(
                "the event loop was held for %.3f s by %s%s; everything on this process waited "
                "(async code must await, not block: use asyncio.sleep, an async client, or a "
                "def job, which runs in a thread)",
                held,
                culprit,
                where,
            )
            return
        # Several tasks took turns without the loop ever being idle: many runs or
        # requests at once, each doing a little, not one blocking call.
        metrics.LOOP_HELD.labels("burst").inc()
        examples = ", ".join(what for what, _ in counts.most_common(3))
        log.warning(
            "the event loop was busy for %.3f s without a break, running %d tasks or more in "
            "turn (%s...): a burst of work rather than one blocking call; if it repeats, "
            "lower ASYNCAPP_MAX_RUNNING or spread the jobs' scheduled times",
            held,
            len(counts),
            examples,
        )

    def _culprit(self) -> tuple[str, str, str]:
        """(kind, what, where) is holding the loop, read from the loop thread's frame."""
        loop = self._loop
        task = compat.current_tasks().get(loop) if loop is not None else None
        try:
            kind, what = self.describe(task)
        except Exception:  # describing must never break the watchdog
            kind, what = "other", "a callback"
        frame = sys._current_frames().get(self._loop_thread)
        return kind, what, _where(frame)


def _where(frame: FrameType | None) -> str:
    """`` at file:line in function (source)`` of the innermost frame outside quiet code."""
    innermost = frame
    while frame is not None:
        filename = os.path.normpath(frame.f_code.co_filename)
        if not filename.startswith(_QUIET):
            break
        frame = frame.f_back
    frame = frame or innermost
    if frame is None:
        return ""
    code = frame.f_code
    # Read from another thread, a frame can have no line yet (f_lineno None);
    # linecache would raise, and the exception would end the watchdog's thread.
    line = frame.f_lineno
    source = linecache.getline(code.co_filename, line).strip() if line else ""
    short = os.path.relpath(code.co_filename) if not code.co_filename.startswith("<") else ""
    if short.startswith(".."):
        short = code.co_filename
    detail = f" ({source})" if source else ""
    return f" at {short or code.co_filename}:{line or '?'} in {code.co_name}{detail}"


#: The request each task is serving, for reports: the ASGI layer adds a task's
#: entry when the request starts and removes it when it ends (a plain dict:
#: a weak one cost a weak reference with a callback per request).
requests: dict[asyncio.Task[Any] | None, str] = {}
