"""The claim transaction on SQLite and PostgreSQL: who wins a scheduled time, what is
recorded instead of a run and why, and what happens to the runs of a dead process."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import insert, select, text

from asyncapp.constants import (
    COALESCED,
    INTERRUPTED,
    LATE,
    MISSED,
    NO_SCHEDULER,
    OVERLAP,
    RUNNING,
    SCHEDULER_PAUSED_STATE,
    UNKNOWN,
    WAITING,
)
from asyncapp.model.job import JobDef
from asyncapp.model.values import as_utc
from asyncapp.store.claims import Due, Outcome, Reasons, claim, end_runs, reap
from asyncapp.store.database import Database
from asyncapp.store.jobs import JobStore
from asyncapp.store.tables import attempts_table, processes_table, runs_table

NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture(autouse=True)
def _now() -> None:
    """``NOW`` is each test's own start: a time taken at collection is minutes old by the
    time a test runs in a full suite on a loaded machine, past the misfire grace.  It is
    a few seconds ahead, so the next time ``due`` gives (1 s after the last) is not due
    while the test runs: a claim coalesces its times into a later one already due."""
    global NOW
    NOW = (datetime.now(UTC) + timedelta(seconds=3)).replace(microsecond=0)


SPEC = {"type": "interval", "seconds": 1, "start_date": "2026-01-01T00:00:00+00:00"}


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest, db_url: str) -> str:
    if request.param == "sqlite":
        return db_url
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
async def db(url: str) -> AsyncIterator[Database]:
    database = Database(url)
    await database.open()
    yield database
    await database.close()


async def add_job(db: Database, job_id: str = "j", **fields: Any) -> JobDef:
    if fields.get("overlap") is None and fields.get("max_instances", 1) > 1:
        fields["overlap"] = "allow"
    job = JobDef(
        id=job_id,
        func="tests.jobs:record",
        trigger=dict(SPEC),
        args=["x"],
        version=1,
        next_run_time=fields.pop("next_run_time", NOW - timedelta(seconds=10)),
        **fields,
    )
    await db.write(lambda conn: JobStore(db).insert(conn, job, 0.0))
    return job


def due(job: JobDef, *times: datetime, **options: Any) -> Due:
    options.setdefault("misfire_grace_time", 60)
    return Due(job.id, job.version, list(times), times[-1] + timedelta(seconds=1), **options)


async def run_claim(
    db: Database, batch: list[Due], process: str = "p1", started: datetime | None = None
) -> list[Outcome]:
    reasons = Reasons(started_at=started or NOW - timedelta(hours=1))
    return await db.write(
        lambda conn: claim(
            db, conn, batch, node=f"node-{process}", process_id=process, reasons=reasons
        )
    )


async def ledger(db: Database) -> list[Any]:
    return await db.read(
        lambda conn: list(conn.execute(select(runs_table).order_by(runs_table.c.scheduled_for)))
    )


async def test_one_process_wins_a_time_the_other_gets_nothing(url: str, db: Database) -> None:
    job = await add_job(db)
    other = Database(url)
    await other.open()
    try:
        first, second = await asyncio.gather(
            run_claim(db, [due(job, NOW)], "p1"), run_claim(other, [due(job, NOW)], "p2")
        )
    finally:
        await other.close()
    won = first[0].won + second[0].won
    assert len(won) == 1 and won[0].scheduled_for == NOW
    assert first[0].missed == second[0].missed == []
    (row,) = await ledger(db)
    assert (row.status, row.process_id) == (RUNNING, won[0].process_id)


async def test_racing_processes_win_every_key_exactly_once(url: str, db: Database) -> None:
    jobs = [await add_job(db, f"j{i}") for i in range(50)]
    times = [NOW - timedelta(seconds=5 - k) for k in range(5)]
    databases = [Database(url) for _ in range(3)]
    for database in databases:
        await database.open()
    won: list[Any] = []
    lock = threading.Lock()
    barrier = threading.Barrier(len(databases))

    def race(database: Database, process: str) -> None:
        reasons = Reasons(started_at=NOW - timedelta(hours=1))
        barrier.wait()
        for moment in times:
            batch = [
                Due(job.id, job.version, [moment], moment + timedelta(seconds=1),
                    misfire_grace_time=3600, coalesce=False)
                for job in jobs
            ]  # fmt: skip
            while batch:
                outcomes = database.write_now(
                    lambda conn, b=batch: claim(
                        database, conn, b, node=process, process_id=process, reasons=reasons
                    )
                )
                with lock:
                    won.extend(run for outcome in outcomes for run in outcome.won + outcome.missed)
                # Rows another process held were skipped: tried again, as the dispatcher does.
                batch = [d for d, o in zip(batch, outcomes, strict=True) if o.locked]

    try:
        threads = [
            threading.Thread(target=race, args=(database, f"p{i}"))
            for i, database in enumerate(databases)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    finally:
        for database in databases:
            await database.close()
    keys = [(run.job_id, run.scheduled_for) for run in won]
    assert len(keys) == len(set(keys)) == 50 * 5
    assert len(await ledger(db)) == 250


async def test_a_stale_version_or_a_paused_job_is_not_claimed(db: Database) -> None:
    job = await add_job(db)
    stale = Due(job.id, job.version + 1, [NOW], NOW + timedelta(seconds=1))
    paused = await add_job(db, "held", next_run_time=None)
    gone = Due("gone", 1, [NOW], None)
    outcomes = await run_claim(db, [stale, due(paused, NOW), gone])
    assert [o.stale for o in outcomes] == [True, True, True]
    assert await ledger(db) == []


async def test_a_paused_scheduler_claims_nothing(db: Database) -> None:
    job = await add_job(db)
    await db.write(lambda conn: JobStore(db).set_scheduler_state(conn, SCHEDULER_PAUSED_STATE, 0.0))
    (outcome,) = await run_claim(db, [due(job, NOW)])
    assert outcome.halted and not outcome.won
    assert await ledger(db) == []


async def test_coalesce_runs_the_latest_and_records_the_others(db: Database) -> None:
    job = await add_job(db)
    times = [NOW - timedelta(seconds=2), NOW - timedelta(seconds=1), NOW]
    (outcome,) = await run_claim(db, [due(job, *times)])
    assert [run.scheduled_for for run in outcome.won] == [NOW]
    assert [(run.scheduled_for, run.reason) for run in outcome.missed] == [
        (times[0], COALESCED),
        (times[1], COALESCED),
    ]
    assert [(row.status, row.reason) for row in await ledger(db)] == [
        (MISSED, COALESCED),
        (MISSED, COALESCED),
        (RUNNING, None),
    ]


async def test_times_past_the_grace_say_why_not_coalesced(db: Database) -> None:
    """Every process was down for an hour: those times were not coalesced into the run
    that follows, no scheduler ran them (the documented ``no_scheduler``)."""
    job = await add_job(db, next_run_time=NOW - timedelta(hours=1))
    times = [NOW - timedelta(hours=1), NOW - timedelta(minutes=30), NOW - timedelta(seconds=1), NOW]
    (outcome,) = await run_claim(db, [due(job, *times)], started=NOW - timedelta(minutes=5))
    assert [run.scheduled_for for run in outcome.won] == [NOW]
    assert [(run.scheduled_for, run.reason) for run in outcome.missed] == [
        (times[0], NO_SCHEDULER),
        (times[1], NO_SCHEDULER),
        (times[2], COALESCED),
    ]


async def test_without_coalesce_every_time_runs_as_one_instance(db: Database) -> None:
    job = await add_job(db)
    times = [NOW - timedelta(seconds=2), NOW - timedelta(seconds=1)]
    (outcome,) = await run_claim(db, [due(job, *times, coalesce=False)])
    assert [run.scheduled_for for run in outcome.won] == times
    # A second batch of the same job meets max_instances = 1.
    (second,) = await run_claim(db, [Due(job.id, 1, [NOW], None, coalesce=False)])
    assert [(run.scheduled_for, run.reason) for run in second.missed] == [(NOW, OVERLAP)]


async def test_a_time_claimed_ahead_while_a_run_is_in_progress_waits_for_its_time(
    db: Database,
) -> None:
    job = await add_job(db)
    (first,) = await run_claim(db, [due(job, NOW - timedelta(seconds=1))])
    assert len(first.won) == 1
    ahead = NOW + timedelta(seconds=30)
    # The run in progress may end before that time: nothing is decided ahead of it.
    (second,) = await run_claim(db, [Due(job.id, 1, [ahead], None, ahead=True)])
    assert second.deferred
    assert not second.won and not second.missed and not second.waiting
    stored = await db.read(lambda conn: JobStore(db).get(conn, job.id))
    assert stored is not None and stored.next_run_time == NOW, "nothing advanced"
    assert len(await ledger(db)) == 1


async def test_a_run_claimed_ahead_of_its_time_starts_at_it(db: Database) -> None:
    job = await add_job(db, next_run_time=NOW + timedelta(seconds=30))
    ahead = NOW + timedelta(seconds=30)
    (outcome,) = await run_claim(db, [due(job, ahead)])
    (run,) = outcome.won
    assert run.scheduled_for == ahead and run.started_at == ahead


async def test_times_past_the_grace_are_missed_with_the_reason(db: Database) -> None:
    job = await add_job(db, next_run_time=NOW - timedelta(hours=2))
    before_start = NOW - timedelta(hours=2)
    after_start = NOW - timedelta(minutes=30)
    batch = [due(job, before_start, after_start, coalesce=False)]
    (outcome,) = await run_claim(db, batch, started=NOW - timedelta(hours=1))
    assert outcome.won == []
    assert [run.reason for run in outcome.missed] == [NO_SCHEDULER, LATE]
    assert all(run.error_message for run in outcome.missed)


async def test_a_run_in_progress_elsewhere_makes_the_next_an_overlap(db: Database) -> None:
    job = await add_job(db)
    (first,) = await run_claim(db, [due(job, NOW - timedelta(seconds=1))], "p1")
    assert first.won
    (second,) = await run_claim(db, [due(job, NOW)], "p2")
    assert second.won == []
    assert [run.reason for run in second.missed] == [OVERLAP]


async def test_run_now_is_refused_at_max_instances(db: Database) -> None:
    job = await add_job(db, next_run_time=None)  # paused jobs may still be run by hand
    manual = Due(job.id, job.version, [NOW], None, manual=True)
    (ok,) = await run_claim(db, [manual])
    assert ok.won and not ok.busy
    again = Due(job.id, job.version, [NOW + timedelta(milliseconds=5)], None, manual=True)
    (busy,) = await run_claim(db, [again])
    assert busy.busy and not busy.won


async def test_claims_advance_the_stored_next_run_and_finish_one_shot_jobs(
    db: Database,
) -> None:
    job = await add_job(db)
    one_shot = await add_job(db, "once")
    nxt = NOW + timedelta(seconds=1)
    await run_claim(db, [Due(job.id, 1, [NOW], nxt), Due(one_shot.id, 1, [NOW], None)])
    stored = await db.read(lambda conn: JobStore(db).some(conn, ["j", "once"]))
    assert stored["j"].next_run_time == nxt
    assert "once" not in stored
    # A stale process's claim never moves it back.
    (late,) = await run_claim(db, [Due(job.id, 1, [NOW], NOW + timedelta(milliseconds=500))])
    assert late.won == late.missed == []
    stored = await db.read(lambda conn: JobStore(db).some(conn, ["j"]))
    assert stored["j"].next_run_time == nxt


async def test_a_folded_range_is_one_missed_record(db: Database) -> None:
    job = await add_job(db, next_run_time=NOW - timedelta(days=1))
    folded = (NOW - timedelta(days=1), NOW - timedelta(seconds=60))
    batch = [Due(job.id, 1, [NOW], None, misfire_grace_time=60, folded=folded)]
    (outcome,) = await run_claim(db, batch, started=NOW - timedelta(seconds=5))
    (record,) = outcome.missed
    assert (record.scheduled_for, record.missed_until) == folded
    assert record.reason == NO_SCHEDULER
    rows = await ledger(db)
    assert as_utc(rows[0].missed_until) == folded[1]


async def test_runs_of_a_dead_process_are_unknown_or_rerun(db: Database) -> None:
    plain = await add_job(db, "plain")
    again = await add_job(db, "again", rerun_interrupted=True)
    await run_claim(db, [due(plain, NOW), due(again, NOW)], "dead")
    # The dead process never registered (or its row was removed): its runs are orphans.
    reruns = await db.write(
        lambda conn: reap(conn, db, node="live", process_id="p2", can_run=lambda job: True)
    )
    assert [(run.job_id, run.attempt, run.process_id) for run, _ in reruns] == [("again", 2, "p2")]
    rows = {row.job_id: row for row in await ledger(db)}
    assert rows["plain"].status == UNKNOWN
    assert "stopped responding before recording" in rows["plain"].error_message
    assert (rows["again"].status, rows["again"].attempt) == (RUNNING, 2)
    earlier = await db.read(lambda conn: list(conn.execute(select(attempts_table))))
    assert [(a.run_id, a.attempt, a.status) for a in earlier] == [(rows["again"].id, 1, UNKNOWN)]


async def test_a_late_end_replaces_unknown_unless_the_run_was_taken_over(db: Database) -> None:
    """A process presumed dead records its ends after all: the real end replaces the
    reaper's ``unknown``; a run another process took over to run again is left alone."""
    plain = await add_job(db, "plain")
    again = await add_job(db, "again", rerun_interrupted=True)
    outcomes = await run_claim(db, [due(plain, NOW), due(again, NOW)], "dead")
    won = {run.job_id: run for outcome in outcomes for run in outcome.won}
    await db.write(
        lambda conn: reap(conn, db, node="live", process_id="p2", can_run=lambda job: True)
    )
    late = [won["plain"].finish("success"), won["again"].finish("success")]
    recorded, _ = await db.write(lambda conn: end_runs(conn, db, late, "dead"))
    assert recorded == 1
    rows = {row.job_id: row for row in await ledger(db)}
    assert rows["plain"].status == "success" and rows["plain"].error_message is None
    assert (rows["again"].status, rows["again"].process_id) == (RUNNING, "p2")


async def test_an_orphan_that_cannot_be_reaped_does_not_stop_the_others(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: one failing orphan rolled back the whole reaping (and the heartbeat
    around it), in every process, at every beat."""
    bad = await add_job(db, "bad")
    good = await add_job(db, "good")
    again = await add_job(db, "again", rerun_interrupted=True)
    await run_claim(db, [due(bad, NOW), due(good, NOW), due(again, NOW)], "dead")
    # A real database error on one row only: a trigger refusing its update.
    if db.is_postgres:
        poison = [
            "CREATE FUNCTION poisoned() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "IF OLD.job_id = 'bad' THEN RAISE EXCEPTION 'poisoned row'; END IF; "
            "RETURN NEW; END $$",
            "CREATE TRIGGER poisoned BEFORE UPDATE ON asyncapp_runs "
            "FOR EACH ROW EXECUTE FUNCTION poisoned()",
        ]
    else:
        poison = [
            "CREATE TRIGGER poisoned BEFORE UPDATE ON asyncapp_runs WHEN OLD.job_id = 'bad' "
            "BEGIN SELECT RAISE(ABORT, 'poisoned row'); END"
        ]
    await db.write(lambda conn: [conn.execute(text(sql)) for sql in poison])

    reruns = await db.write(
        lambda conn: reap(conn, db, node="live", process_id="p2", can_run=lambda job: True)
    )
    assert [(run.job_id, run.attempt) for run, _ in reruns] == [("again", 2)]
    rows = {row.job_id: row for row in await ledger(db)}
    assert {job: row.status for job, row in rows.items()} == {
        "bad": RUNNING, "good": UNKNOWN, "again": RUNNING,
    }  # fmt: skip
    assert rows["again"].process_id == "p2"
    assert f"reaping run {rows['bad'].id} of job bad failed" in caplog.text


async def test_runs_of_a_live_process_are_left_alone(db: Database) -> None:
    job = await add_job(db)
    await db.write(
        lambda conn: conn.execute(
            processes_table.insert().values(
                id="p1", node="n", host="h", pid=1, role="server", started_at=0.0,
                heartbeat_at=0.0, version="0", info="{}",
            )
        )
    )  # fmt: skip
    await run_claim(db, [due(job, NOW)], "p1")
    assert (
        await db.write(lambda conn: reap(conn, db, node="n", process_id="p2", can_run=bool)) == []
    )
    assert [row.status for row in await ledger(db)] == [RUNNING]


def test_keys_of_a_chain_and_of_a_fresh_load_agree() -> None:
    """Two processes compute bit-identical times however they reached them."""
    from asyncapp.model.triggers import build_trigger, canonical_time, fire_time_after

    trigger = build_trigger(
        {"type": "interval", "seconds": 0.3, "start_date": "2026-01-01T00:00:00.123457+00:00"},
        UTC,
        jitter=False,
    )
    now = datetime(2026, 1, 2, tzinfo=UTC)
    chain = [fire_time_after(trigger, None, now - timedelta(hours=1))]
    for _ in range(10_000):
        chain.append(fire_time_after(trigger, chain[-1], now))
    for moment in chain[::997]:
        assert moment is not None
        reloaded = datetime.fromtimestamp(moment.timestamp(), UTC)  # the float column
        assert canonical_time(trigger, reloaded) == moment
        assert fire_time_after(trigger, None, moment - timedelta(milliseconds=1)) == moment


# -- overlap policies ---------------------------------------------------------------


async def test_buffer_one_waits_one_run_and_the_end_of_the_running_one_starts_it(
    db: Database,
) -> None:
    from asyncapp.store.claims import end_runs

    job = await add_job(db, overlap="buffer_one")
    times = [NOW - timedelta(seconds=2), NOW - timedelta(seconds=1), NOW]
    (first,) = await run_claim(db, [due(job, times[0], overlap="buffer_one")], "p1")
    (second,) = await run_claim(db, [due(job, times[1], overlap="buffer_one")], "p2")
    (third,) = await run_claim(db, [due(job, times[2], overlap="buffer_one")], "p2")
    assert first.won and [run.scheduled_for for run in second.waiting] == [times[1]]
    assert [(run.scheduled_for, run.reason) for run in third.missed] == [(times[2], OVERLAP)]
    ended = first.won[0].finish("success")
    await register(db, "p1")
    recorded, started = await db.write(
        lambda conn: end_runs(conn, db, [ended], "p1", buffered=[job.id])
    )
    assert recorded == 1
    assert [(run.id, run.process_id) for run in started] == [(second.waiting[0].id, "p1")]
    statuses = [(row.status, row.process_id) for row in await ledger(db)]
    assert statuses == [("success", "p1"), (RUNNING, "p1"), (MISSED, None)]


async def test_a_process_presumed_dead_starts_no_waiting_run(db: Database) -> None:
    from asyncapp.store.claims import end_runs

    job = await add_job(db, overlap="buffer_one")
    times = [NOW - timedelta(seconds=1), NOW]
    (first,) = await run_claim(db, [due(job, times[0], overlap="buffer_one")], "p1")
    (second,) = await run_claim(db, [due(job, times[1], overlap="buffer_one")], "p2")
    assert first.won and second.waiting
    # p1 has no row in asyncapp_processes: it was presumed dead (and fenced).
    _, started = await db.write(
        lambda conn: end_runs(conn, db, [first.won[0].finish("success")], "p1", buffered=[job.id])
    )
    assert started == []
    statuses = [row.status for row in await ledger(db)]
    assert statuses == ["success", WAITING], "the waiting run stays for a live process"


async def register(db: Database, process_id: str) -> None:
    await db.write(
        lambda conn: conn.execute(
            insert(processes_table).values(
                id=process_id, node=f"node-{process_id}", host="test", pid=0, role="server",
                started_at=0.0, heartbeat_at=time.time(), version="0", info="{}",
            )
        )
    )  # fmt: skip


async def test_cancel_other_ends_the_running_run_and_starts_the_new_one(db: Database) -> None:
    job = await add_job(db, overlap="cancel_other")
    earlier, later = NOW - timedelta(seconds=1), NOW
    (first,) = await run_claim(db, [due(job, earlier, overlap="cancel_other")], "p1")
    (second,) = await run_claim(db, [due(job, later, overlap="cancel_other")], "p2")
    assert second.cancelled == [(first.won[0].id, "p1")]
    assert [run.scheduled_for for run in second.won] == [later]
    rows = {row.id: row for row in await ledger(db)}
    cancelled = rows[first.won[0].id]
    assert cancelled.status == INTERRUPTED and "cancel_other" in cancelled.error_message
    assert rows[second.won[0].id].status == RUNNING


async def test_allow_runs_alongside_up_to_max_instances(db: Database) -> None:
    job = await add_job(db, overlap="allow", max_instances=2)
    times = [NOW - timedelta(seconds=2), NOW - timedelta(seconds=1), NOW]
    outcomes = [
        (await run_claim(db, [due(job, t, overlap="allow")], f"p{i}"))[0]
        for i, t in enumerate(times)
    ]
    assert [bool(o.won) for o in outcomes] == [True, True, False]
    assert [run.reason for run in outcomes[2].missed] == [OVERLAP]


async def test_an_ended_run_counts_no_more_even_if_another_process_ended_it(
    db: Database,
) -> None:
    """A run another process ended (cancelled) keeps that verdict when its own end comes."""
    job = await add_job(db, overlap="cancel_other")
    (first,) = await run_claim(db, [due(job, NOW - timedelta(seconds=1), overlap="cancel_other")])
    await run_claim(db, [due(job, NOW, overlap="cancel_other")], "p2")
    late = first.won[0].finish("success")
    recorded, _ = await db.write(lambda conn: end_runs(conn, db, [late], "p1"))
    assert recorded == 0
    rows = {row.id: row for row in await ledger(db)}
    assert rows[late.id].status == INTERRUPTED


async def test_a_time_claimed_after_the_next_fell_due_coalesces_into_it_unless_final(
    db: Database,
) -> None:
    """A stall held the claim past the next time: with coalesce, that later time runs,
    not this one; but a claim queued behind another claim of its job (``final``) runs
    its time, so a job whose claims lag its interval still runs."""
    job = await add_job(db)
    first, second = NOW - timedelta(seconds=10), NOW - timedelta(seconds=9)
    late = Due(job.id, job.version, [first], second, misfire_grace_time=60)
    (outcome,) = await run_claim(db, [late])
    assert outcome.won == []
    assert [(run.scheduled_for, run.reason) for run in outcome.missed] == [(first, COALESCED)]
    queued = Due(job.id, job.version, [second], second + timedelta(seconds=1),
                 misfire_grace_time=60, final=True)  # fmt: skip
    (outcome,) = await run_claim(db, [queued])
    assert [run.scheduled_for for run in outcome.won] == [second]


async def test_a_change_passing_over_due_times_records_them_with_why(db: Database) -> None:
    """A pause (or a new next time) over times no claim took: each gets a missed record,
    ``no_scheduler`` with no live firing process, ``changed`` with one (the change beat
    its claim), ``scheduler_paused`` while the scheduler-wide state is paused."""
    import time

    from asyncapp.store.claims import record_skipped
    from asyncapp.store.jobs import JobStore

    past = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=2)

    async def skipped(job_id: str) -> list[tuple[datetime, str | None]]:
        job = await add_job(db, job_id, next_run_time=past)
        paused = job.changed(next_run_time=None)
        found = await db.write(lambda conn: record_skipped(
            conn, db, job, paused, zone=UTC, node="n", process_timeout=10,
        ))  # fmt: skip
        return [(run.scheduled_for, run.reason) for run in found]

    alone = await skipped("alone")  # every second from ``past`` up to now
    assert [t for t, _ in alone] == [past + timedelta(seconds=i) for i in range(len(alone))]
    assert len(alone) >= 3 and {reason for _, reason in alone} == {NO_SCHEDULER}
    await db.write(lambda conn: conn.execute(processes_table.insert().values(
        id="p1", node="n", host="h", pid=1, role="server", started_at=0.0,
        heartbeat_at=time.time(), version="0", info="{}",
    )))  # fmt: skip
    assert {reason for _, reason in await skipped("beaten")} == {"changed"}
    await db.write(lambda conn: JobStore(db).set_scheduler_state(conn, SCHEDULER_PAUSED_STATE, 0))
    assert {reason for _, reason in await skipped("held")} == {"scheduler_paused"}
