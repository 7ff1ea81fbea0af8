"""Dispatcher on its own, over the SQL store on a real SQLite file and a fake runner: batched
claims, runs started only where won, "run now", claims counted by path, the cap on runs
at once, drain, and what its owner is told when a claim cannot be made."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from prometheus_client import REGISTRY

from asyncapp.constants import (
    BUFFER_ONE,
    INTERRUPTED,
    LATE,
    MISSED,
    RUNNING,
    SCHEDULER_PAUSED_STATE,
    SUCCESS,
    WAITING,
)
from asyncapp.engine.dispatch import Dispatcher, Hooks, Submission, merged
from asyncapp.engine.recorder import Recorder
from asyncapp.errors import DatabaseUnavailable, JobBusy, JobNotFound, NotRunning
from asyncapp.model.change import Actor
from asyncapp.model.job import JobDef
from asyncapp.model.run import Run
from asyncapp.settings import Settings
from asyncapp.store.database import Database
from asyncapp.store.interface import Due, Reasons
from asyncapp.store.sql import SqlStore
from asyncapp.store.tables import processes_table
from tests.unit_parts import insert, job, on_grid, tick

T = TypeVar("T")


class WatchedDatabase(Database):
    """A Database that counts its write transactions, and lets a test await them."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.writes = 0
        self._wrote = asyncio.Event()

    async def write(self, fn: Callable[[Any], T]) -> T:
        try:
            return await super().write(fn)
        finally:
            self.writes += 1
            self._wrote.set()

    async def written(self, count: int) -> None:
        """Until ``count`` write transactions have ended (committed or not)."""
        while self.writes < count:
            self._wrote.clear()
            await self._wrote.wait()


class FakeRunner:
    """Records the runs it is given; each runs until its job's event is set."""

    def __init__(self, recorder: Recorder, settings: Settings) -> None:
        self.recorder = recorder
        self.settings = settings
        self.abandoned: set[str] = set()
        self.started: list[Run] = []
        self.ended: list[Run] = []
        #: (run id, whether it was in ``abandoned``) of each cancelled run.
        self.cancelled: list[tuple[str, bool]] = []
        self.release: dict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self._changed = asyncio.Event()

    def abandon(self, run_id: str) -> None:
        self.abandoned.add(run_id)

    def forget(self, run_id: str) -> None:
        self.abandoned.discard(run_id)

    async def run(self, run: Run, job: JobDef, func: Callable[..., Any]) -> Run:
        self.started.append(run)
        self._changed.set()
        try:
            await self.release[job.id].wait()
        except asyncio.CancelledError:
            self.cancelled.append((run.id, run.id in self.abandoned))
            self.recorder.finish(run.finish(INTERRUPTED))
            raise
        ended = run.finish(SUCCESS)
        self.ended.append(ended)
        self.recorder.finish(ended, buffered=job.overlap == BUFFER_ONE)
        return ended

    async def wait_started(self, count: int) -> list[Run]:
        while len(self.started) < count:
            self._changed.clear()
            await self._changed.wait()
        return self.started


class Told(Hooks):
    """Hooks that keep what the dispatcher told them."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def stale(self, job_ids: set[str]) -> None:
        self.calls.append(("stale", job_ids))

    def halted(self, submissions: list[Submission]) -> None:
        self.calls.append(("halted", submissions))

    def database_down(self, submissions: list[Submission]) -> None:
        self.calls.append(("database_down", submissions))


@pytest.fixture
def now() -> datetime:
    return on_grid(datetime.now(UTC))


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "jobs.db"


class WatchedStore(SqlStore):
    """The SQL store on a :class:`WatchedDatabase`."""

    db: WatchedDatabase

    def __init__(self, url: str) -> None:
        super().__init__(WatchedDatabase(url))

    @property
    def writes(self) -> int:
        return self.db.writes

    async def written(self, count: int) -> None:
        await self.db.written(count)


@pytest.fixture
async def store(db_path: Path) -> AsyncIterator[WatchedStore]:
    opened = WatchedStore(f"sqlite:///{db_path}")
    await opened.open()
    yield opened
    await opened.close()


@pytest.fixture
async def dispatchers() -> AsyncIterator[list[Dispatcher]]:
    """Dispatchers made by :func:`dispatcher`; stopped and drained after the test."""
    made: list[Dispatcher] = []
    yield made
    for one in made:
        await one.stop()
        await one.drain(0)


def dispatcher(
    made: list[Dispatcher],
    store: SqlStore,
    now: datetime,
    process: str = "p1",
    hooks: Hooks | None = None,
    **settings: Any,
) -> tuple[Dispatcher, FakeRunner]:
    runner = FakeRunner(Recorder(store, process), Settings(**settings))
    # Claims are fenced: only a process with its row in asyncapp_processes may claim.
    db = store.db
    if db.engine is not None:
        db.write_now(
            lambda conn: conn.execute(
                db.insert_ignoring_conflicts(processes_table, "id").values(
                    id=process, node=f"node-{process}", host="test", pid=0, role="server",
                    started_at=0.0, heartbeat_at=time.time(), version="0", info="{}",
                )
            )
        )  # fmt: skip
    one = Dispatcher(
        store,
        runner,  # type: ignore[arg-type]
        node=f"node-{process}",
        process_id=process,
        reasons=Reasons(started_at=now - timedelta(hours=1)),
        max_running=runner.settings.max_running,
        hooks=hooks,
    )
    made.append(one)
    return one, runner


def submission(one: JobDef, *times: datetime, **options: Any) -> Submission:
    options.setdefault("misfire_grace_time", 60)
    options.setdefault("overlap", one.overlap)
    due = Due(one.id, one.version, list(times), times[-1] + timedelta(seconds=10), **options)
    return Submission(due, one, tick)


async def ledger(store: SqlStore) -> list[Run]:
    """Every run and missed record, by job and scheduled time."""
    page = await store.run_page(
        job_id=None, status=None, limit=1000, offset=0, since=None, until=None, job_contains=None
    )
    return sorted(page.runs, key=lambda run: (run.job_id, run.scheduled_for))


async def test_a_batch_is_claimed_in_one_transaction_and_only_won_runs_start(
    store: WatchedStore, now: datetime, dispatchers: list[Dispatcher]
) -> None:
    told = Told()
    one, runner = dispatcher(dispatchers, store, now, hooks=told)
    a, b = job("a", next_run_time=now), job("b", next_run_time=now)
    changed = job("c", next_run_time=now, version=2)
    too_late = job("d", next_run_time=now - timedelta(seconds=120))
    await insert(store, a, b, changed, too_late)
    writes = store.writes

    one.submit(submission(a, now))
    one.submit(submission(b, now))
    one.submit(submission(changed.changed(version=1), now))  # fired from a stale cache
    one.submit(submission(too_late, now - timedelta(seconds=120)))  # past its 60 s of grace
    one.start()
    started = await runner.wait_started(2)

    assert store.writes == writes + 1
    assert sorted(run.job_id for run in started) == ["a", "b"]
    assert all((r.process_id, r.node, r.scheduled_for) == ("p1", "node-p1", now) for r in started)
    assert told.calls == [("stale", {"c"})]
    assert one.running == 2 and sorted(one.run_ids()) == sorted(r.id for r in started)
    rows = await ledger(store)
    assert [(r.job_id, r.status, r.process_id, r.reason) for r in rows] == [
        ("a", RUNNING, "p1", None),
        ("b", RUNNING, "p1", None),
        ("d", MISSED, None, LATE),
    ]


async def test_a_second_dispatcher_claiming_the_same_times_wins_nothing(
    store: WatchedStore, db_path: Path, now: datetime, dispatchers: list[Dispatcher]
) -> None:
    a = job("a", next_run_time=now)
    await insert(store, a)
    first, first_runner = dispatcher(dispatchers, store, now, "p1")
    first.start()
    first.submit(submission(a, now))
    (won,) = await first_runner.wait_started(1)

    other = WatchedStore(f"sqlite:///{db_path}")
    await other.open()
    try:
        told = Told()
        second, second_runner = dispatcher(dispatchers, other, now, "p2", hooks=told)
        second.start()
        second.submit(submission(a, now))
        await other.written(1)
        await second.stop()
    finally:
        await other.close()

    assert second_runner.started == [] and second.running == 0 and told.calls == []
    assert [(r.id, r.process_id) for r in await ledger(store)] == [(won.id, "p1")]


async def test_two_dispatchers_racing_for_a_time_start_it_once(
    store: WatchedStore, db_path: Path, now: datetime, dispatchers: list[Dispatcher]
) -> None:
    a = job("a", next_run_time=now)
    await insert(store, a)
    other = WatchedStore(f"sqlite:///{db_path}")
    await other.open()
    try:
        first, first_runner = dispatcher(dispatchers, store, now, "p1")
        second, second_runner = dispatcher(dispatchers, other, now, "p2")
        before = store.writes
        for one in (first, second):
            one.submit(submission(a, now))
            one.start()
        await asyncio.gather(store.written(before + 1), other.written(1))
        started = await (first_runner if first.running else second_runner).wait_started(1)
        await second.stop()
        await second.drain(0)
    finally:
        await other.close()

    assert len(first_runner.started) + len(second_runner.started) == 1
    assert [(r.id, r.process_id) for r in await ledger(store)] == [
        (started[0].id, started[0].process_id)
    ]


async def test_run_now_returns_the_started_run(
    store: WatchedStore, now: datetime, dispatchers: list[Dispatcher]
) -> None:
    a = job("a", next_run_time=None)  # paused: a run asked for still starts
    await insert(store, a)
    one, runner = dispatcher(dispatchers, store, now)
    one.start()

    run = await one.run_now(a, tick)

    assert (run.job_id, run.status, run.process_id, run.node) == ("a", RUNNING, "p1", "node-p1")
    assert run.started_at is not None
    (started,) = await runner.wait_started(1)
    assert started.id == run.id
    assert [(r.id, r.status) for r in await ledger(store)] == [(run.id, RUNNING)]


async def test_run_now_is_refused_at_the_limit_and_for_a_removed_job(
    store: WatchedStore, now: datetime, dispatchers: list[Dispatcher]
) -> None:
    a = job("a")
    await insert(store, a)
    one, runner = dispatcher(dispatchers, store, now)
    one.start()
    await one.run_now(a, tick)

    with pytest.raises(JobBusy):
        await one.run_now(a, tick)

    await store.remove_job("a", Actor("code"))
    with pytest.raises(JobNotFound):
        await one.run_now(a, tick)
    assert len(runner.started) == 1


async def test_a_run_now_still_queued_when_the_dispatcher_stops_is_refused(
    store: WatchedStore, now: datetime, dispatchers: list[Dispatcher]
) -> None:
    a = job("a")
    await insert(store, a)
    one, runner = dispatcher(dispatchers, store, now)  # never started: nothing claims

    asked, stopped = await asyncio.gather(one.run_now(a, tick), one.stop(), return_exceptions=True)

    assert isinstance(asked, NotRunning) and stopped is None
    assert runner.started == [] and await ledger(store) == []


async def test_run_now_on_a_stopped_dispatcher_is_refused(
    store: WatchedStore, now: datetime, dispatchers: list[Dispatcher]
) -> None:
    a = job("a")
    await insert(store, a)
    one, runner = dispatcher(dispatchers, store, now)
    one.start()
    await one.stop()

    with pytest.raises(NotRunning):
        await asyncio.wait_for(one.run_now(a, tick), 0.5)
    assert runner.started == [] and await ledger(store) == []


def attempted(path: str) -> float:
    """``asyncapp_claims_attempted_total{path=...}`` in this process."""
    return REGISTRY.get_sample_value("asyncapp_claims_attempted_total", {"path": path}) or 0.0


async def test_every_submission_is_claimed_at_once_and_counted_by_its_path(
    store: WatchedStore, now: datetime, dispatchers: list[Dispatcher]
) -> None:
    one, runner = dispatcher(dispatchers, store, now)
    mine, swept = job("mine", next_run_time=now), job("swept", next_run_time=now)
    await insert(store, mine, swept)
    one.start()
    share, sweep = attempted("share"), attempted("sweep")
    writes = store.writes

    one.submit(submission(mine, now))
    taken = submission(swept, now - timedelta(seconds=10), now)
    taken.swept = True
    one.submit(taken)
    started = await runner.wait_started(2)

    # No delay for either: both went into the first claim transaction.
    assert store.writes == writes + 1
    assert {run.job_id for run in started} == {"mine", "swept"}
    assert attempted("share") == share + 1
    assert attempted("sweep") == sweep + 2


async def test_at_most_max_running_runs_at_once_the_rest_wait_their_turn(
    store: WatchedStore, now: datetime, dispatchers: list[Dispatcher]
) -> None:
    a, b = job("a", next_run_time=now), job("b", next_run_time=now)
    await insert(store, a, b)
    one, runner = dispatcher(dispatchers, store, now, max_running=1)
    one.submit(submission(a, now))
    one.submit(submission(b, now))
    one.start()
    (first,) = await runner.wait_started(1)
    await store.ping()  # a round trip: every run task has had its turn

    assert len(runner.started) == 1 and one.running == 2

    runner.release[first.job_id].set()
    first_again, second = await runner.wait_started(2)
    assert first_again is first and {first.job_id, second.job_id} == {"a", "b"}


async def test_drain_records_a_run_still_waiting_for_a_slot_as_interrupted(
    store: WatchedStore, now: datetime, dispatchers: list[Dispatcher]
) -> None:
    a, b = job("a", next_run_time=now), job("b", next_run_time=now)
    await insert(store, a, b)
    one, runner = dispatcher(dispatchers, store, now, max_running=1)
    one.submit(submission(a, now))
    one.submit(submission(b, now))
    one.start()
    await runner.wait_started(1)

    assert await one.drain(0) == 2
    runner.recorder.start()
    assert await runner.recorder.stop(5) == 0

    assert [(r.job_id, r.status) for r in await ledger(store)] == [
        ("a", INTERRUPTED),
        ("b", INTERRUPTED),
    ]


async def test_drain_waits_for_runs_within_the_grace_and_cancels_the_rest(
    store: WatchedStore, now: datetime, dispatchers: list[Dispatcher]
) -> None:
    a, b = job("a", next_run_time=now), job("b", next_run_time=now)
    await insert(store, a, b)
    one, runner = dispatcher(dispatchers, store, now)
    one.submit(submission(a, now))
    one.submit(submission(b, now))
    one.start()
    await runner.wait_started(2)
    runs = {run.job_id: run.id for run in runner.started}

    runner.release["a"].set()
    cancelled = await one.drain(0.2)

    assert cancelled == 1
    assert [run.id for run in runner.ended] == [runs["a"]]
    assert runner.cancelled == [(runs["b"], False)]  # recorded before drain returned
    assert one.running == 0


async def test_drain_returns_nothing_cancelled_when_runs_end_in_time(
    store: WatchedStore, now: datetime, dispatchers: list[Dispatcher]
) -> None:
    a = job("a", next_run_time=now)
    await insert(store, a)
    one, runner = dispatcher(dispatchers, store, now)
    one.submit(submission(a, now))
    one.start()
    await runner.wait_started(1)

    runner.release["a"].set()

    assert await one.drain(30) == 0
    assert len(runner.ended) == 1 and runner.cancelled == [] and one.running == 0
    assert await one.drain(30) == 0  # nothing left to wait for


async def test_times_claimed_together_run_in_order_and_those_never_started_end_interrupted(
    store: WatchedStore, now: datetime, dispatchers: list[Dispatcher]
) -> None:
    earlier = now - timedelta(seconds=10)
    a = job("a", next_run_time=earlier, coalesce=False)
    await insert(store, a)
    one, runner = dispatcher(dispatchers, store, now)
    one.submit(submission(a, earlier, now, coalesce=False))
    one.start()
    (first,) = await runner.wait_started(1)
    assert one.running == 1 and len(one.run_ids()) == 2  # one task runs both, in order

    assert await one.drain(0) == 1
    recorder = runner.recorder
    recorder.start()
    assert await recorder.stop(5) == 0

    rows = await ledger(store)
    assert [(r.scheduled_for.replace(tzinfo=UTC), r.status) for r in rows] == [
        (earlier, INTERRUPTED),
        (now, INTERRUPTED),
    ]
    assert first.scheduled_for == earlier and len(runner.started) == 1


async def test_abandon_cancels_a_run_marking_it_for_the_runner(
    store: WatchedStore, now: datetime, dispatchers: list[Dispatcher]
) -> None:
    a = job("a")
    await insert(store, a)
    one, runner = dispatcher(dispatchers, store, now)
    one.start()
    run = await one.run_now(a, tick)
    await runner.wait_started(1)

    one.abandon([run.id, "not-a-run-here"])
    assert await one.drain(30) == 0  # it ended by itself, cancelled

    assert runner.cancelled == [(run.id, True)]
    assert runner.abandoned == set() and one.running == 0


async def test_a_waiting_buffer_one_run_starts_here_when_the_run_before_it_ends(
    store: WatchedStore, now: datetime, dispatchers: list[Dispatcher]
) -> None:
    a = job("a", next_run_time=now, overlap=BUFFER_ONE)
    await insert(store, a)
    one, runner = dispatcher(dispatchers, store, now)
    runner.recorder.start()
    one.start()
    first = await one.run_now(a, tick)
    writes = store.writes
    one.submit(submission(a, now))
    await store.written(writes + 1)
    (waiting,) = [r for r in await ledger(store) if r.status == WAITING]

    runner.release["a"].set()

    _, promoted = await runner.wait_started(2)
    assert promoted.id == waiting.id and promoted.process_id == "p1"
    assert await one.drain(30) == 0
    assert await runner.recorder.stop(5) == 0
    assert {(r.id, r.status) for r in await ledger(store)} == {
        (first.id, SUCCESS),
        (waiting.id, SUCCESS),
    }


async def test_a_paused_scheduler_halts_scheduled_claims_but_not_run_now(
    store: WatchedStore, now: datetime, dispatchers: list[Dispatcher]
) -> None:
    a = job("a", next_run_time=now)
    await insert(store, a)
    await store.set_scheduler_state(SCHEDULER_PAUSED_STATE, Actor("code"))
    told = Told()
    one, runner = dispatcher(dispatchers, store, now, hooks=told)
    one.start()
    scheduled = submission(a, now)
    writes = store.writes

    one.submit(scheduled)
    await store.written(writes + 1)

    assert told.calls == [("halted", [scheduled])] and runner.started == []
    run = await one.run_now(a, tick)
    assert [r.id for r in await runner.wait_started(1)] == [run.id]


async def test_a_claim_the_database_refuses_goes_to_database_down(
    store: WatchedStore, db_path: Path, now: datetime, dispatchers: list[Dispatcher]
) -> None:
    a, b = job("a", next_run_time=now), job("b", next_run_time=now)
    await insert(store, a, b)
    told = Told()
    one, runner = dispatcher(dispatchers, store, now, hooks=told)
    ended = Run(job_id="b", scheduled_for=now, node="node-p1", process_id="p1")
    runner.recorder.finish(ended.finish(SUCCESS))  # a result waiting to ride on a claim
    # The database goes away for real: its connections closed, its directory gone.
    assert store.db.engine is not None
    store.db.engine.dispose()
    db_path.parent.rename(db_path.parent.with_name("gone"))
    one.start()

    scheduled = submission(a, now)
    one.submit(scheduled)
    with pytest.raises(DatabaseUnavailable):
        await one.run_now(b, tick)

    assert told.calls == [("database_down", [scheduled])]
    assert runner.started == [] and one.running == 0
    assert runner.recorder.pending == 1  # handed back to the recorder, not lost
    assert store.down_since is not None


async def test_definitions_kept_for_runs_taken_over_are_bounded(
    store: SqlStore,
    now: datetime,
    dispatchers: list[Dispatcher],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from asyncapp.engine import dispatch

    monkeypatch.setattr(dispatch, "LATEST_KEPT", 3)
    one, runner = dispatcher(dispatchers, store, now)
    made = [job(f"k{index}", next_run_time=now) for index in range(5)]
    for each in made:
        one.start_runs([Run(job_id=each.id, scheduled_for=now, node="n")], each, tick)
    await runner.wait_started(5)
    assert list(one._latest) == ["k2", "k3", "k4"], "the latest 3 jobs, no more"
    for each in made:
        runner.release[each.id].set()


def test_scheduled_submissions_of_one_job_queued_together_are_claimed_as_one() -> None:
    """Times planned one by one while a claim waited are claimed together, so coalescing
    sees them all; "run now" and other jobs are left as they are."""
    at = [datetime(2027, 1, 1, tzinfo=UTC) + timedelta(seconds=10 * i) for i in range(4)]

    def submission(job_id: str, time: datetime, **options: Any) -> Submission:
        return Submission(Due(job_id, 1, [time], time + timedelta(seconds=10), **options),
                          job(job_id), tick)  # fmt: skip

    batch = [
        submission("a", at[0]),
        submission("b", at[0]),
        submission("a", at[1], final=True),
        submission("a", at[2], manual=True),
        submission("a", at[3]),
    ]
    kept = merged(batch)
    assert [s.due.job_id for s in kept] == ["a", "b", "a"]
    first = kept[0].due
    assert first.times == [at[0], at[1], at[3]]
    assert (first.next_run_time, first.final) == (at[3] + timedelta(seconds=10), True)
    assert kept[2].due.manual and kept[2].due.times == [at[2]]
