"""Job functions the tests schedule (``ASYNCAPP_JOB_MODULES=tests.jobs``).

Runs are recorded in ``fired``; tests await ``wait_fired`` instead of sleeping.
"""

from __future__ import annotations

import asyncio
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flask import current_app

from asyncapp import current_run, http_client, task

fired: list[dict[str, Any]] = []
_waiters: list[tuple[str, int, asyncio.Future[None], asyncio.AbstractEventLoop]] = []
_lock = threading.Lock()


@dataclass
class Gate:
    """Lets a test hold a job until it says go."""

    started: asyncio.Event
    release: asyncio.Event


gates: dict[str, Gate] = {}


def reset() -> None:
    with _lock:
        fired.clear()
        _waiters.clear()
        gates.clear()
        attempts.clear()
        running_now.update(count=0, peak=0)


def _record(tag: str, **extra: Any) -> None:
    with _lock:
        fired.append({"tag": tag, "thread": threading.get_ident(), **extra})
        count = sum(1 for entry in fired if entry["tag"] == tag)
        for waiter in list(_waiters):
            want_tag, want, future, loop = waiter
            if want_tag == tag and count >= want:
                _waiters.remove(waiter)
                loop.call_soon_threadsafe(_resolve, future)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def wait_fired(tag: str, count: int = 1, timeout: float = 10) -> list[dict[str, Any]]:
    """Wait until ``tag`` was recorded ``count`` times; returns those records."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[None] = loop.create_future()
    with _lock:
        if sum(1 for entry in fired if entry["tag"] == tag) >= count:
            future.set_result(None)
        else:
            _waiters.append((tag, count, future, loop))
    await asyncio.wait_for(future, timeout)
    return [entry for entry in fired if entry["tag"] == tag]


def gate(tag: str) -> Gate:
    gates[tag] = Gate(asyncio.Event(), asyncio.Event())
    return gates[tag]


@task
async def record(tag: str) -> None:
    """Record where it ran: loop, thread, shared client, job id, Flask app."""
    _record(
        tag,
        loop=id(asyncio.get_running_loop()),
        client=id(http_client()),
        job_id=current_run().job_id,
        app=current_app.name,
        config_token=current_app.config.get("ASYNCAPP_API_TOKEN"),
    )


@task
def record_sync(tag: str) -> None:
    """A plain ``def`` job: must run in a worker thread."""
    _record(tag, job_id=current_run().job_id, app=current_app.name)


@task
async def hold(tag: str) -> None:
    """Start, then wait for the test to release it (or to be cancelled)."""
    entry = gates[tag]
    entry.started.set()
    await entry.release.wait()
    _record(tag)


@task
async def fail(message: str) -> None:
    """Record ``fail:<message>``, then raise ValueError(message)."""
    _record(f"fail:{message}")
    raise ValueError(message)


@task
def append_line(path: str, line: str) -> None:
    """For tests across processes: append a line to a file."""
    with Path(path).open("a") as handle:
        handle.write(line + "\n")


@task
async def mark(path: str, label: str = "", seconds: float = 0) -> None:
    """For tests across processes: append one line per start, then sleep ``seconds``.

    The line is ``<scheduled time> <pid> <run id> <label>``; one ``write`` of a
    short line to a file opened for appending is atomic, so several processes
    can share the file.
    """
    _write_mark(path, label)
    if seconds:
        await asyncio.sleep(seconds)


def _write_mark(path: str, label: str) -> None:
    """Append ``<scheduled time> <pid> <run id> <label>`` for the current run, in one
    ``write`` (atomic for a short line appended, so processes can share the file)."""
    run = current_run()
    line = f"{run.scheduled_for.isoformat()} {os.getpid()} {run.run_id} {label}\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


@task
async def nap(tag: str, seconds: float) -> None:
    """Start, sleep ``seconds`` on the loop, record: a job of known length."""
    gates[tag].started.set()
    await asyncio.sleep(seconds)
    _record(tag)


POISONS = {
    "surrogate": "lone \ud800 surrogate",
    "nul": "a NUL \x00 byte",
    "huge": "x" * 1_000_000,
}


@task
async def poison(kind: str) -> None:
    """Raise an error whose message no database takes as is (see ``POISONS``)."""
    _record(f"poison:{kind}")
    raise ValueError(POISONS[kind])


@task
async def block(tag: str, seconds: float) -> None:
    """Hold the event loop with ``time.sleep``: what the watchdog must name."""
    import time

    time.sleep(seconds)
    _record(tag)


attempts: dict[str, list[float]] = {}


@task
async def flaky(tag: str, failures: int) -> None:
    """Fail ``failures`` times (per tag), then succeed; records when each attempt began."""
    import time

    began = attempts.setdefault(tag, [])
    began.append(time.monotonic())
    _record(f"{tag}:attempt")
    if len(began) <= failures:
        raise ConnectionError(f"attempt {len(began)} of {tag} failed")
    _record(tag, attempt=current_run().attempt, key=current_run().key)


@task
async def stamped_flaky(path: str, failures: int) -> None:
    """Append ``<attempt> <time.time()>`` to ``path`` at each start (and record ``stamped``);
    fail ``failures`` times."""
    import time

    attempt = current_run().attempt
    with Path(path).open("a") as handle:
        handle.write(f"{attempt} {time.time():.6f}\n")
    _record("stamped")
    if attempt <= failures:
        raise ConnectionError(f"attempt {attempt} failed")


@task
def sync_hold(tag: str, seconds: float) -> None:
    """A def job sleeping in its thread."""
    import time

    _record(f"{tag}:start")
    time.sleep(seconds)
    _record(tag)


running_now = {"count": 0, "peak": 0}


@task
async def crowd(tag: str, seconds: float) -> None:
    """Count how many of these run at once (``running_now['peak']``)."""
    running_now["count"] += 1
    running_now["peak"] = max(running_now["peak"], running_now["count"])
    try:
        await asyncio.sleep(seconds)
    finally:
        running_now["count"] -= 1
    _record(tag)


@task
async def span(path: str, seconds: float) -> None:
    """For overlap tests across processes: a start line, then after ``seconds`` (or when
    cancelled) an end line."""
    import time

    run = current_run()

    def write(phase: str) -> None:
        scheduled = run.scheduled_for.isoformat()
        line = f"{phase} {time.time():.6f} {os.getpid()} {run.run_id} {scheduled}\n"
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    write("start")
    try:
        await asyncio.sleep(seconds)
    finally:
        write("end")


@task
async def mark_attempt(path: str, failing: int = 1, seconds: float = 0) -> None:
    """Like ``mark``, labelled ``attempt<n>``; attempts up to ``failing`` then raise.

    The line is written before anything else, so it is the attempt's ground truth.
    """
    run = current_run()
    _write_mark(path, f"attempt{run.attempt}")
    if seconds:
        await asyncio.sleep(seconds)
    if run.attempt <= failing:
        raise ConnectionError(f"attempt {run.attempt} failed")
