"""JobCache on its own: what it takes from committed rows, how its fire state moves,
and which jobs it keeps out of the index as broken."""

from __future__ import annotations

import logging
from datetime import UTC, timedelta

import pytest

from asyncapp.engine.cache import JobCache, owns
from tests.unit_parts import EPOCH, job, registry, tick

S = timedelta(seconds=1)


@pytest.fixture
def cache() -> JobCache:
    return JobCache(registry(), UTC)


def ids(cache: JobCache) -> list[str]:
    return [entry.id for entry in cache.entries()]


def test_load_replaces_the_whole_cache_and_forgets_broken_jobs(cache: JobCache) -> None:
    cache.load([job("a"), job("b"), job("lost", func="tests.nowhere:gone")])
    assert sorted(ids(cache)) == ["a", "b"] and set(cache.broken) == {"lost"}

    cache.load([job("c")])

    assert ids(cache) == ["c"]
    assert cache.broken == {}
    entry = cache.entry("c")
    assert entry is not None and entry.job == job("c")
    assert entry.func is tick


def test_entries_are_ordered_by_next_run_time_paused_last(cache: JobCache) -> None:
    cache.load(
        [
            job("a", next_run_time=EPOCH + 30 * S),
            job("paused", next_run_time=None),
            job("b", next_run_time=EPOCH + 10 * S),
            job("c", next_run_time=EPOCH + 20 * S),
        ]
    )

    assert ids(cache) == ["b", "c", "a", "paused"]
    assert cache.get_next_run_time() == EPOCH + 10 * S
    assert [e.id for e in cache.get_due_jobs(EPOCH + 20 * S)] == ["b", "c"]


def test_a_time_read_back_from_the_float_column_stands_for_its_exact_scheduled_time(
    cache: JobCache,
) -> None:
    cache.put(job(next_run_time=EPOCH + 10 * S - timedelta(microseconds=300)))

    entry = cache.entry("j")
    assert entry is not None and entry.next_run_time == EPOCH + 10 * S


def test_put_ignores_a_version_older_than_the_cached_one(cache: JobCache) -> None:
    cache.put(job(version=3, args=["new"], next_run_time=EPOCH + 30 * S))

    cache.put(job(version=2, args=["old"], next_run_time=EPOCH))
    cache.put(job(version=2, func="tests.nowhere:gone"))  # nor does an old broken one count

    entry = cache.entry("j")
    assert entry is not None
    assert (entry.job.version, entry.job.args, entry.next_run_time) == (3, ["new"], EPOCH + 30 * S)
    assert cache.broken == {}


def test_fire_state_only_moves_forward_for_the_same_version(cache: JobCache) -> None:
    cache.put(job(version=1, next_run_time=EPOCH))
    entry = cache.entry("j")
    assert entry is not None
    cache.advance(entry, EPOCH + 20 * S)  # fired: times up to EPOCH + 10 s are handed on

    # The database lags the claims in flight: its row still says EPOCH + 10 s.
    cache.put(job(version=1, next_run_time=EPOCH + 10 * S))

    entry = cache.entry("j")
    assert entry is not None and entry.next_run_time == EPOCH + 20 * S


def test_a_newer_version_takes_the_stored_time_so_a_stale_claims_time_is_planned_again(
    cache: JobCache,
) -> None:
    cache.put(job(version=1, next_run_time=EPOCH))
    entry = cache.entry("j")
    assert entry is not None
    cache.advance(entry, EPOCH + 10 * S)  # EPOCH handed to a claim made with version 1

    # A change of the timeout only committed before that claim: the claim is stale,
    # and the database still says EPOCH for version 2.
    cache.put(job(version=2, timeout=5, next_run_time=EPOCH))

    entry = cache.entry("j")
    assert entry is not None and (entry.job.version, entry.next_run_time) == (2, EPOCH)


def test_a_new_trigger_takes_its_own_next_time_even_an_earlier_one(cache: JobCache) -> None:
    cache.put(job(version=1, next_run_time=EPOCH + 60 * S))
    every_5s = {"type": "interval", "seconds": 5, "start_date": EPOCH.isoformat()}

    cache.put(job(version=2, trigger=every_5s, next_run_time=EPOCH + 5 * S))

    entry = cache.entry("j")
    assert entry is not None
    assert (entry.job.version, entry.next_run_time) == (2, EPOCH + 5 * S)


def test_a_paused_version_stays_in_the_cache_without_a_time_and_resumes(cache: JobCache) -> None:
    cache.put(job(version=1, next_run_time=EPOCH))

    cache.put(job(version=2, next_run_time=None))
    entry = cache.entry("j")
    assert entry is not None and entry.next_run_time is None
    assert cache.get_due_jobs(EPOCH + 3600 * S) == []

    cache.put(job(version=3, next_run_time=EPOCH + 50 * S))
    entry = cache.entry("j")
    assert entry is not None and entry.next_run_time == EPOCH + 50 * S


def test_drop_forgets_a_job_and_its_broken_report(cache: JobCache) -> None:
    cache.load([job("a"), job("lost", func="tests.nowhere:gone")])

    cache.drop("a")
    cache.drop("lost")
    cache.drop("never-there")

    assert cache.entries() == [] and cache.broken == {}
    assert cache.get_next_run_time() is None


def test_advance_moves_an_entry_and_none_takes_it_out_of_the_index(cache: JobCache) -> None:
    cache.load([job("a", next_run_time=EPOCH), job("b", next_run_time=EPOCH + 10 * S)])
    a = cache.entry("a")
    assert a is not None

    cache.advance(a, EPOCH + 20 * S)
    assert ids(cache) == ["b", "a"] and a.next_run_time == EPOCH + 20 * S

    cache.advance(a, None)
    assert ids(cache) == ["b"] and cache.entry("a") is None


def test_restore_puts_back_a_time_whose_claim_failed(cache: JobCache) -> None:
    cache.put(job(next_run_time=EPOCH))
    entry = cache.entry("j")
    assert entry is not None
    cache.advance(entry, EPOCH + 10 * S)  # handed EPOCH to a claim, which then failed

    cache.restore(job(), EPOCH)

    assert entry.next_run_time == EPOCH
    assert [e.id for e in cache.get_due_jobs(EPOCH)] == ["j"]


def test_restore_never_moves_a_job_forward_nor_touches_another_version(cache: JobCache) -> None:
    cache.put(job(version=1, next_run_time=EPOCH))
    cache.restore(job(version=1), EPOCH + 30 * S)  # later than what is cached
    entry = cache.entry("j")
    assert entry is not None and entry.next_run_time == EPOCH

    cache.put(job(version=2, next_run_time=EPOCH + 50 * S))  # changed since the claim
    cache.restore(job(version=1), EPOCH + 10 * S)
    entry = cache.entry("j")
    assert entry is not None and (entry.job.version, entry.next_run_time) == (2, EPOCH + 50 * S)


def test_restore_brings_back_a_one_shot_job_taken_out_by_advance(cache: JobCache) -> None:
    once = job(trigger={"type": "date", "run_date": EPOCH.isoformat()}, next_run_time=EPOCH)
    cache.put(once)
    entry = cache.entry("j")
    assert entry is not None
    cache.advance(entry, None)  # its only time went to a claim
    assert cache.entry("j") is None

    cache.restore(once, EPOCH)

    entry = cache.entry("j")
    assert entry is not None and entry.next_run_time == EPOCH


def test_a_job_of_an_unknown_function_is_broken_reported_once(
    cache: JobCache, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="asyncapp.cache")

    cache.put(job("lost", func="tests.nowhere:gone"))
    cache.put(job("lost", func="tests.nowhere:gone", version=2))

    assert cache.entry("lost") is None and cache.entries() == []
    assert "tests.nowhere:gone" in cache.broken["lost"]
    assert [r.getMessage() for r in caplog.records if "lost" in r.getMessage()] == [
        f"job lost is broken and will not run: {cache.broken['lost']}"
    ]


def test_damaged_rows_and_bad_triggers_are_broken(cache: JobCache) -> None:
    damaged = job("damaged", trigger={}, damaged="its stored definition cannot be read")
    bad = job("bad", trigger={"type": "interval", "seconds": 10, "bogus": 1})

    cache.load([damaged, bad])

    assert cache.entries() == []
    assert cache.broken["damaged"] == "its stored definition cannot be read"
    assert "bogus" in cache.broken["bad"]


def test_a_cached_job_whose_new_version_is_broken_leaves_the_index_and_comes_back_fixed(
    cache: JobCache,
) -> None:
    cache.put(job(version=1))

    cache.put(job(version=2, func="tests.nowhere:gone"))
    assert cache.entry("j") is None and "j" in cache.broken

    cache.put(job(version=3, next_run_time=EPOCH + 10 * S))
    entry = cache.entry("j")
    assert entry is not None and entry.job.version == 3 and cache.broken == {}


# -- shares ----------------------------------------------------------------------------


def test_shares_give_each_job_id_to_exactly_one_of_the_live_processes() -> None:
    job_ids = [f"job-{n}" for n in range(300)]

    shares = [[j for j in job_ids if owns(j, (index, 3))] for index in range(3)]

    assert sorted(j for share in shares for j in share) == sorted(job_ids)
    assert all(60 <= len(share) <= 140 for share in shares), [len(s) for s in shares]
    assert all(owns(j, (0, 1)) for j in job_ids)


def test_the_index_holds_only_the_share_and_the_other_jobs_are_known_by_id() -> None:
    cache = JobCache(registry(), UTC, share=(1, 2))
    jobs = [job(f"job-{n}") for n in range(40)]

    cache.load([*jobs, job("lost", func="tests.nowhere:gone")])

    mine = sorted(j.id for j in jobs if owns(j.id, (1, 2)))
    assert sorted(ids(cache)) == mine and 0 < len(mine) < 40
    assert cache.known == 40
    assert cache.others == {j.id for j in jobs} - set(mine)
    assert set(cache.broken) == {"lost"}  # broken whatever its share
    theirs = next(iter(cache.others))
    cache.drop(theirs)
    assert theirs not in cache.others and cache.known == 39


def test_reshard_drops_the_jobs_that_left_the_share_and_returns_those_that_joined() -> None:
    cache = JobCache(registry(), UTC, share=(0, 2))
    jobs = {f"job-{n}": job(f"job-{n}") for n in range(60)}
    cache.load(jobs.values())

    joined = cache.reshard((0, 3))

    before = {j for j in jobs if owns(j, (0, 2))}
    after = {j for j in jobs if owns(j, (0, 3))}
    assert set(joined) == after - before
    # Until the caller has re-read them, the joined jobs are not planned here.
    assert set(ids(cache)) == before & after
    for job_id in joined:
        cache.put(jobs[job_id])
    assert set(ids(cache)) == after
    assert cache.known == 60 and cache.others == set(jobs) - after
    assert cache.reshard((0, 3)) == []


def test_a_time_of_another_share_is_not_put_back_into_the_index() -> None:
    cache = JobCache(registry(), UTC, share=(0, 2))
    theirs = next(job(f"job-{n}") for n in range(50) if not owns(f"job-{n}", (0, 2)))
    cache.load([theirs])

    cache.restore(theirs, EPOCH)

    assert ids(cache) == [] and cache.entry(theirs.id) is None
