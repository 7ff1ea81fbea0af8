"""Runner on its own: how a run ends (success, error, timeout), retries and their
attempts, cancellation, the job's context, and ``def`` jobs in their own threads."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from asyncapp.constants import ERROR, INTERRUPTED, SUCCESS, TIMEOUT
from asyncapp.engine.recorder import Recorder
from asyncapp.engine.runner import RunContext, Runner, current_run
from asyncapp.errors import NotRunning
from asyncapp.model.run import Run
from asyncapp.settings import Settings
from asyncapp.store.claims import Due, Reasons, claim
from asyncapp.store.sql import SqlStore
from tests.unit_parts import EVERY_10S, insert, job, on_grid, sqlite_store


class Oops(Exception):
    """A job's own error."""


class Ledger:
    """A recorder that keeps what it is given, in order."""

    def __init__(self) -> None:
        self.ended: list[Run] = []
        self.buffered: list[bool] = []
        self.attempts: list[Run] = []
        self.attempted = asyncio.Event()

    def finish(self, run: Run, *, func: str | None = None, buffered: bool = False) -> None:
        self.ended.append(run)
        self.buffered.append(buffered)

    def attempt(self, run: Run) -> None:
        self.attempts.append(run)
        self.attempted.set()


def settings(**values: Any) -> Settings:
    values.setdefault("retry_backoff", 0.001)
    values.setdefault("retry_backoff_max", 0.002)
    return Settings(**values)


@pytest.fixture
def ledger() -> Ledger:
    return Ledger()


@pytest.fixture
def runner(ledger: Ledger) -> Iterator[Runner]:
    runner = Runner(ledger, settings())  # type: ignore[arg-type]
    yield runner
    runner.close()


def a_run(**fields: Any) -> Run:
    fields.setdefault("scheduled_for", datetime.now(UTC).replace(microsecond=0))
    return Run(job_id="j", node="node-1", process_id="p1", **fields)


def failing(times: int, error: BaseException | None = None) -> Any:
    """An async body that raises ``error`` (an :class:`Oops`) its first ``times`` calls."""
    calls: list[int] = []

    async def body(*args: Any, **kwargs: Any) -> None:
        calls.append(current_run().attempt)
        if len(calls) <= times:
            raise error or Oops(f"attempt {len(calls)} broke")

    body.calls = calls  # type: ignore[attr-defined]
    return body


async def forever() -> None:
    await asyncio.Event().wait()


def hanging(started: asyncio.Event) -> Any:
    """An async body that says it started, then waits for ever."""

    async def body() -> None:
        started.set()
        await forever()

    return body


async def test_a_run_that_returns_ends_success_with_its_arguments(
    runner: Runner, ledger: Ledger
) -> None:
    got: list[Any] = []

    async def body(*args: Any, **kwargs: Any) -> None:
        got.append((args, kwargs))

    run = a_run()
    ended = await runner.run(run, job(args=[1, "two"], kwargs={"three": 3}), body)

    assert got == [((1, "two"), {"three": 3})]
    assert (ended.id, ended.status, ended.attempt, ended.error_type) == (run.id, SUCCESS, 1, None)
    assert ended.started_at is not None and ended.ended_at is not None
    assert run.scheduled_for <= ended.started_at <= ended.ended_at
    assert ledger.ended == [ended] and ledger.buffered == [False] and ledger.attempts == []


async def test_an_ended_buffer_one_run_is_queued_as_buffered(
    runner: Runner, ledger: Ledger
) -> None:
    await runner.run(a_run(), job(overlap="buffer_one"), failing(0))

    assert ledger.buffered == [True]


async def test_an_error_is_recorded_with_its_type_and_message_and_logged_once(
    runner: Runner, ledger: Ledger, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="asyncapp.run")

    ended = await runner.run(a_run(), job(), failing(1, Oops("it broke")))

    assert (ended.status, ended.error_type, ended.error_message) == (
        ERROR,
        "tests.test_unit_runner.Oops",
        "it broke",
    )
    assert ledger.ended == [ended]
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is not None
    assert errors[0].exc_info[1] is not None and str(errors[0].exc_info[1]) == "it broke"


async def test_a_builtin_error_is_named_bare(runner: Runner) -> None:
    ended = await runner.run(a_run(), job(), failing(1, ValueError("bad value")))

    assert (ended.error_type, ended.error_message) == ("ValueError", "bad value")


async def test_an_attempt_past_its_timeout_is_cancelled_and_recorded_timeout(
    runner: Runner, ledger: Ledger
) -> None:
    started = asyncio.Event()

    ended = await runner.run(a_run(), job(timeout=0.05), hanging(started))

    assert started.is_set()
    assert (ended.status, ended.error_type) == (TIMEOUT, "asyncapp.errors.JobTimeout")
    assert ended.error_message == "the attempt took longer than its timeout of 0.05 s"
    assert ledger.ended == [ended]


async def test_a_timeout_error_raised_by_the_job_itself_is_an_error_not_a_timeout(
    runner: Runner,
) -> None:
    ended = await runner.run(a_run(), job(timeout=30), failing(1, TimeoutError("upstream")))

    assert (ended.status, ended.error_type, ended.error_message) == (
        ERROR,
        "TimeoutError",
        "upstream",
    )


async def test_failed_attempts_are_retried_and_each_kept(runner: Runner, ledger: Ledger) -> None:
    body = failing(2)
    run = a_run()

    ended = await runner.run(run, job(retries=2), body)

    assert body.calls == [1, 2, 3]  # current_run().attempt in each attempt
    assert (ended.id, ended.status, ended.attempt, ended.error_type) == (run.id, SUCCESS, 3, None)
    assert [(a.id, a.attempt, a.status, a.error_message) for a in ledger.attempts] == [
        (run.id, 1, ERROR, "attempt 1 broke"),
        (run.id, 2, ERROR, "attempt 2 broke"),
    ]
    # The run's start is its first attempt's.
    assert ended.started_at == ledger.attempts[0].started_at
    assert ledger.ended == [ended]


async def test_a_run_whose_retries_are_spent_ends_with_the_last_attempt(
    runner: Runner, ledger: Ledger
) -> None:
    ended = await runner.run(a_run(), job(retries=1), failing(5))

    assert (ended.status, ended.attempt, ended.error_message) == (ERROR, 2, "attempt 2 broke")
    assert [a.attempt for a in ledger.attempts] == [1]


async def test_a_timed_out_attempt_is_retried(runner: Runner, ledger: Ledger) -> None:
    calls: list[int] = []

    async def body() -> None:
        calls.append(current_run().attempt)
        if len(calls) == 1:
            await forever()

    ended = await runner.run(a_run(), job(timeout=0.05, retries=1), body)

    assert (ended.status, ended.attempt) == (SUCCESS, 2)
    assert [(a.attempt, a.status) for a in ledger.attempts] == [(1, TIMEOUT)]


def test_backoff_is_equal_jitter_doubling_up_to_the_maximum(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runner = Runner(Ledger(), settings(retry_backoff=1.0, retry_backoff_max=3.0))  # type: ignore[arg-type]
    try:
        monkeypatch.setattr(random, "uniform", lambda low, high: low)
        assert [runner.backoff(n) for n in (1, 2, 3, 4)] == [0.5, 1.0, 1.5, 1.5]
        monkeypatch.setattr(random, "uniform", lambda low, high: high)
        assert [runner.backoff(n) for n in (1, 2, 3, 4)] == [1.0, 2.0, 3.0, 3.0]
    finally:
        runner.close()


async def test_a_cancelled_run_is_recorded_interrupted_and_cancellation_goes_on(
    runner: Runner, ledger: Ledger
) -> None:
    started = asyncio.Event()
    run = a_run()
    task = asyncio.create_task(runner.run(run, job(), hanging(started)))
    await started.wait()

    task.cancel()

    with pytest.raises(asyncio.CancelledError):
        await task
    (ended,) = ledger.ended
    assert (ended.id, ended.status) == (run.id, INTERRUPTED) and ended.ended_at is not None


async def test_a_run_cancelled_while_waiting_to_retry_is_recorded_interrupted(
    ledger: Ledger,
) -> None:
    runner = Runner(ledger, settings(retry_backoff=30, retry_backoff_max=60))  # type: ignore[arg-type]
    try:
        task = asyncio.create_task(runner.run(a_run(), job(retries=1), failing(1)))
        await ledger.attempted.wait()  # attempt 1 failed; the backoff is 15-30 s

        task.cancel()

        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        runner.close()
    assert [(r.status, r.attempt) for r in ledger.ended] == [(INTERRUPTED, 1)]


async def test_an_abandoned_run_is_stopped_recording_nothing(
    runner: Runner, ledger: Ledger
) -> None:
    started = asyncio.Event()
    run = a_run()
    task = asyncio.create_task(runner.run(run, job(), hanging(started)))
    await started.wait()

    runner.abandoned.add(run.id)
    task.cancel()

    with pytest.raises(asyncio.CancelledError):
        await task
    assert ledger.ended == []
    assert runner.abandoned == set()


async def test_a_run_cancelled_in_its_jitter_delay_is_recorded_interrupted(
    runner: Runner, ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    delaying = asyncio.Event()

    def longest(low: float, high: float) -> float:
        delaying.set()  # the run draws its delay, then waits it out in the same step
        return high

    monkeypatch.setattr(random, "uniform", longest)
    started = asyncio.Event()
    run = a_run()
    spread = job(trigger={**EVERY_10S, "jitter": 30})
    task = asyncio.create_task(runner.run(run, spread, hanging(started)))
    await delaying.wait()

    task.cancel()

    with pytest.raises(asyncio.CancelledError):
        await task
    assert not started.is_set()
    assert [(r.id, r.status) for r in ledger.ended] == [(run.id, INTERRUPTED)]


async def test_current_run_tells_the_job_about_itself_and_only_inside_it(runner: Runner) -> None:
    seen: list[RunContext] = []

    async def body() -> None:
        seen.append(current_run())

    run = a_run(attempt=1)
    await runner.run(run, job(), body)

    (context,) = seen
    assert (context.job_id, context.run_id, context.scheduled_for, context.node) == (
        "j",
        run.id,
        run.scheduled_for,
        "node-1",
    )
    assert context.key == run.key == f"j@{run.scheduled_for.isoformat()}"
    assert context.attempt == 1 and context.settings is runner.settings
    with pytest.raises(NotRunning):
        current_run()


async def test_a_def_job_runs_in_a_job_thread_with_its_context(runner: Runner) -> None:
    seen: list[tuple[threading.Thread, str]] = []

    def body(tag: str) -> None:
        seen.append((threading.current_thread(), f"{tag}:{current_run().run_id}"))

    run = a_run()
    ended = await runner.run(run, job(args=["sync"]), body)

    ((thread, said),) = seen
    assert thread is not threading.current_thread()
    assert thread.name.startswith("asyncapp-job")
    assert said == f"sync:{run.id}" and ended.status == SUCCESS


async def test_the_run_context_is_entered_around_each_attempt(ledger: Ledger) -> None:
    entered: list[int] = []

    @contextlib.contextmanager
    def app_context() -> Iterator[None]:
        entered.append(len(entered) + 1)
        yield

    runner = Runner(ledger, settings(), app_context)  # type: ignore[arg-type]
    try:
        await runner.run(a_run(), job(retries=1), failing(1))
    finally:
        runner.close()
    assert entered == [1, 2]


@pytest.fixture
async def claimed(tmp_path: Path) -> AsyncIterator[tuple[SqlStore, Run]]:
    """A store holding job ``j`` and a run of it claimed by process ``p1``."""
    async with sqlite_store(tmp_path / "jobs.db") as store:
        now = on_grid(datetime.now(UTC))
        await insert(store, job(next_run_time=now))
        due = Due("j", 1, [now], now + timedelta(seconds=10), misfire_grace_time=60)
        reasons = Reasons(started_at=now - timedelta(hours=1))
        db = store.db
        (outcome,) = await db.write(
            lambda conn: claim(db, conn, [due], node="node-1", process_id="p1", reasons=reasons)
        )
        (run,) = outcome.won
        yield store, run


async def test_with_a_real_recorder_the_run_and_its_failed_attempt_are_written(
    claimed: tuple[SqlStore, Run],
) -> None:
    store, run = claimed
    recorder = Recorder(store, "p1")
    runner = Runner(recorder, settings())
    recorder.start()
    try:
        ended = await runner.run(run, job(retries=1), failing(1, Oops("first")))
        assert await recorder.stop(5) == 0
    finally:
        runner.close()

    page = await store.run_page(
        job_id="j", status=None, limit=10, offset=0, since=None, until=None, job_contains=None
    )
    (row,) = page.runs
    assert (row.id, row.status, row.attempt, ended.status) == (run.id, SUCCESS, 2, SUCCESS)
    assert [(a["attempt"], a["status"], a["error_message"]) for a in page.attempts[run.id]] == [
        (1, ERROR, "first")
    ]
