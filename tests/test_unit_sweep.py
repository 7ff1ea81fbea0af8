"""The sweep on its own, over a real SQLite database: which late due times it reads,
which of them it takes, and how it plans them (from the stored time, with the stored
version) for the dispatcher."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from asyncapp.engine.cache import JobCache, owns
from asyncapp.engine.dispatch import Submission
from asyncapp.engine.sweep import ANYONE_AFTER, LATE_AFTER, Sweeper, backup, wanted_here
from asyncapp.store.sql import SqlStore
from asyncapp.store.tables import jobs_table
from tests.unit_parts import insert, job, on_grid, registry, sqlite_store

SHARE = (0, 2)


def mine(n: int = 0) -> str:
    return [f"job-{i}" for i in range(100) if owns(f"job-{i}", SHARE)][n]


def theirs(n: int = 0) -> str:
    return [f"job-{i}" for i in range(100) if not owns(f"job-{i}", SHARE)][n]


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[SqlStore]:
    async with sqlite_store(tmp_path / "sweep.db") as database:
        yield database


class Sweep:
    """A sweeper over a cache holding :data:`SHARE`, keeping what it submits."""

    def __init__(self, db: SqlStore) -> None:
        self.cache = JobCache(registry(), UTC, share=SHARE)
        self.submitted: list[Submission] = []
        self.firing = True
        self.sweeper = Sweeper(db, self.cache, self.submitted.append, lambda: self.firing)


async def test_overdue_reads_times_late_past_the_cutoff_of_known_functions_oldest_first(
    db: SqlStore,
) -> None:
    now = datetime.now(UTC)
    await insert(
        db,
        job("late", next_run_time=now - timedelta(seconds=5)),
        job("later", next_run_time=now - timedelta(seconds=30)),
        job("on-time", next_run_time=now),
        job("paused", next_run_time=None),
        job("unknown", func="tests.nowhere:gone", next_run_time=now - timedelta(seconds=5)),
    )
    store = db.rows
    cutoff = now.timestamp() - LATE_AFTER

    found = await db.db.read(lambda conn: store.overdue(conn, cutoff, registry().refs(), 10))
    first = await db.db.read(lambda conn: store.overdue(conn, cutoff, registry().refs(), 1))

    assert [job_id for job_id, _ in found] == ["later", "late"]
    assert found[1][1] == pytest.approx((now - timedelta(seconds=5)).timestamp())
    assert [job_id for job_id, _ in first] == ["later"]


async def test_a_late_time_of_another_share_is_claimed_from_the_stored_time_and_version(
    db: SqlStore,
) -> None:
    stored = on_grid(datetime.now(UTC)) - timedelta(seconds=20)
    await insert(db, job(theirs(), next_run_time=stored, version=3))
    sweep = Sweep(db)

    assert await sweep.sweeper.sweep() == 1

    (taken,) = sweep.submitted
    assert taken.swept and taken.answer is None
    assert taken.due.job_id == theirs() and taken.due.version == 3
    assert taken.due.times[0] == stored
    assert all(t <= datetime.now(UTC) for t in taken.due.times)
    assert taken.due.next_run_time is not None and taken.due.next_run_time > datetime.now(UTC)
    # Planned outside the index: this process's scheduler still does not fire it.
    assert sweep.cache.entry(theirs()) is None


async def test_its_own_share_broken_jobs_recent_times_and_a_halted_scheduler_are_left(
    db: SqlStore,
) -> None:
    late = datetime.now(UTC) - timedelta(seconds=30)
    await insert(
        db,
        job(mine(), next_run_time=late),
        job(theirs(0), next_run_time=late),
        job(theirs(1), next_run_time=datetime.now(UTC) - timedelta(seconds=LATE_AFTER / 4)),
    )
    sweep = Sweep(db)
    sweep.cache.broken[theirs(0)] = "its function is not registered here"

    assert await sweep.sweeper.sweep() == 0
    del sweep.cache.broken[theirs(0)]
    sweep.firing = False
    assert await sweep.sweeper.sweep() == 0
    sweep.firing = True
    assert await sweep.sweeper.sweep() == 1
    assert [s.due.job_id for s in sweep.submitted] == [theirs(0)]


async def test_a_job_swept_is_swept_again_only_once_its_stored_time_moved(db: SqlStore) -> None:
    stored = on_grid(datetime.now(UTC)) - timedelta(seconds=30)
    await insert(db, job(theirs(), next_run_time=stored))
    sweep = Sweep(db)

    assert await sweep.sweeper.sweep() == 1
    # Its claim is not written yet (the dispatcher is behind): not submitted twice.
    assert await sweep.sweeper.sweep() == 0
    moved = stored + timedelta(seconds=10)
    await db.db.write(
        lambda conn: conn.execute(
            update(jobs_table)
            .where(jobs_table.c.id == theirs())
            .values(next_run_time=moved.timestamp())
        )
    )
    assert await sweep.sweeper.sweep() == 1
    assert [s.due.times[0] for s in sweep.submitted] == [stored, moved]


def test_wanted_here_skips_the_own_share_broken_and_recently_swept_at_the_same_time() -> None:
    late = time.time() - 100
    assert wanted_here(theirs(), late, time.time(), SHARE, set(), None)
    assert not wanted_here(mine(), late, time.time(), SHARE, set(), None)
    assert not wanted_here(theirs(), late, time.time(), SHARE, {theirs()}, None)
    assert not wanted_here(theirs(), late, time.time(), SHARE, set(), (late, time.monotonic()))
    assert wanted_here(theirs(), late + 10, time.time(), SHARE, set(), (late, time.monotonic()))


def test_a_late_time_goes_first_to_one_backup_then_after_a_while_to_anyone() -> None:
    job_ids = [f"job-{n}" for n in range(300)]
    shares = [(index, 3) for index in range(3)]
    now = time.time()
    fresh, stale = now - LATE_AFTER, now - ANYONE_AFTER

    for job_id in job_ids:
        owner = next(share for share in shares if owns(job_id, share))
        backups = [share for share in shares if backup(job_id, share)]
        assert len(backups) == 1 and backups[0] != owner
        takers = [s for s in shares if wanted_here(job_id, fresh, now, s, set(), None)]
        assert takers == backups
        anyone = [s for s in shares if wanted_here(job_id, stale, now, s, set(), None)]
        assert anyone == [s for s in shares if s != owner]
    # The backups spread over the processes too.
    counts = [sum(backup(j, share) for j in job_ids) for share in shares]
    assert all(60 <= n <= 140 for n in counts), counts
    # With two processes the backup is the other one.
    assert all(backup(j, (0, 2)) != owns(j, (0, 2)) for j in job_ids)


class Unread:
    """A store that must not be read."""

    async def overdue_jobs(self, *args: object) -> object:
        raise AssertionError("the sweep read the database")


async def test_a_process_alone_does_not_even_read(db: SqlStore) -> None:
    sweep = Sweep(db)
    sweep.cache.share = (0, 1)
    sweep.sweeper.store = Unread()  # type: ignore[assignment]

    assert await sweep.sweeper.sweep() == 0
    sweep.cache.share = (0, 2)
    with pytest.raises(AssertionError, match="read the database"):
        await sweep.sweeper.sweep()
