"""JobService on its own, over the SQL store on a real SQLite file and a registry of its own:
each change committed and recorded with who asked, validation before any write,
"run now" only where jobs run, upcoming times, and reads that never write."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlalchemy import select

from asyncapp.constants import SCHEDULER_PAUSED_STATE, SchedulerState
from asyncapp.errors import InvalidJob, JobExists, JobNotFound, NotRunning, UnknownFunction
from asyncapp.model.change import Actor
from asyncapp.model.job import JobDef
from asyncapp.model.run import Run
from asyncapp.service.jobs import JobService
from asyncapp.settings import Settings
from asyncapp.store.database import Database
from asyncapp.store.sql import SqlStore
from asyncapp.store.tables import metadata
from tests.unit_parts import EPOCH, GREET, TICK, registry

T = TypeVar("T")
API = Actor("api", "10.0.0.7")
CLI = Actor("cli")
EVERY_30S = {"type": "interval", "seconds": 30, "start_date": EPOCH.isoformat()}


class WatchedDatabase(Database):
    """A Database that counts its write transactions."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.writes = 0

    async def write(self, fn: Callable[[Any], T]) -> T:
        self.writes += 1
        return await super().write(fn)


class Local:
    """A process that runs jobs, as the service sees it: keeps what it is told."""

    def __init__(self) -> None:
        self.applied_calls: list[tuple[list[JobDef], list[str]]] = []
        self.states: list[SchedulerState] = []
        self.asked: list[JobDef] = []

    def applied(self, jobs: Iterable[JobDef], removed: Iterable[str]) -> None:
        self.applied_calls.append((list(jobs), list(removed)))

    def state_applied(self, state: SchedulerState) -> None:
        self.states.append(state)

    async def run_now(self, job: JobDef, *, run_id: str | None = None) -> Run:
        self.asked.append(job)
        run_id = run_id or "run-1"
        return Run(job_id=job.id, scheduled_for=datetime.now(UTC), node="node-1", id=run_id)

    def info(self) -> dict[str, Any]:
        return {"runs_in_progress": 0}


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[WatchedDatabase]:
    database = WatchedDatabase(f"sqlite:///{tmp_path / 'jobs.db'}")
    await database.open()
    yield database
    await database.close()


@pytest.fixture
def local() -> Local:
    return Local()


@pytest.fixture
def service(db: Database, local: Local) -> JobService:
    return JobService(SqlStore(db), registry(), Settings(), local=local)


def spec(job_id: str = "a", **fields: Any) -> dict[str, Any]:
    fields.setdefault("func", TICK)
    fields.setdefault("trigger", dict(EVERY_30S))
    return {"id": job_id, **fields}


async def stored(db: Database, job_id: str) -> JobDef | None:
    """The job as committed, read on a connection of its own."""
    other = SqlStore.at(str(db.url))
    await other.open(migrate=False)
    try:
        return await other.job(job_id)
    finally:
        await other.close()


def first_time_after(before: datetime, after: datetime, moment: datetime) -> bool:
    """Whether ``moment`` is a time of :data:`EVERY_30S` and the first one after some
    instant between ``before`` and ``after``."""
    on_grid = (moment - EPOCH) % timedelta(seconds=30) == timedelta(0)
    return on_grid and before < moment <= after + timedelta(seconds=30)


async def history(service: JobService, job_id: str) -> list[tuple[str, str, str | None, Any]]:
    """(action, source, client, detail) of each change of ``job_id``, oldest first."""
    changes = (await service.job_changes(job_id))["changes"]
    return [(c["action"], c["source"], c["client"], c["detail"]) for c in reversed(changes)]


async def test_add_job_commits_the_job_records_who_added_it_and_tells_the_cache(
    db: Database, service: JobService, local: Local
) -> None:
    before = datetime.now(UTC)

    added = await service.add_job(spec(args=[1]), API)
    after = datetime.now(UTC)

    assert (added["id"], added["name"], added["func"], added["args"]) == ("a", "a", TICK, [1])
    assert (added["version"], added["paused"], added["broken"]) == (1, False, False)
    assert (added["misfire_grace_time"], added["coalesce"], added["overlap"]) == (60, True, "skip")
    job = await stored(db, "a")
    assert job is not None and job.version == 1 and job.next_run_time is not None
    assert first_time_after(before, after, job.next_run_time)
    assert datetime.fromisoformat(added["next_run_time"]) == job.next_run_time
    ((action, source, client, detail),) = await history(service, "a")
    assert (action, source, client) == ("add", "api", "10.0.0.7")
    assert detail["args"] == [None, [1]] and detail["func"] == [None, TICK]
    assert local.applied_calls == [([job], [])]


async def test_get_and_list_read_what_is_stored(service: JobService) -> None:
    added = await service.add_job(spec("soon"), API)
    await service.add_job(spec("later", trigger={"type": "interval", "hours": 1}), API)
    await service.add_job(spec("paused", paused=True), API)

    assert await service.get_job("soon") == added
    assert [job["id"] for job in await service.list_jobs()] == ["soon", "later", "paused"]
    with pytest.raises(JobNotFound):
        await service.get_job("nope")


async def test_update_job_bumps_the_version_and_records_only_what_changed(
    db: Database, service: JobService, local: Local
) -> None:
    await service.add_job(spec(func=GREET, args=["ann"]), API)

    updated = await service.update_job("a", {"args": ["bob"], "retries": 2}, CLI)

    assert (updated["args"], updated["retries"], updated["version"]) == (["bob"], 2, 2)
    job = await stored(db, "a")
    assert job is not None and (job.args, job.retries, job.version) == (["bob"], 2, 2)
    assert (await history(service, "a"))[1:] == [
        ("modify", "cli", None, {"args": [["ann"], ["bob"]], "retries": [0, 2]})
    ]
    assert local.applied_calls[-1] == ([job], [])


async def test_an_update_that_changes_nothing_writes_no_version_and_no_history(
    db: Database, service: JobService
) -> None:
    await service.add_job(spec(args=[1]), API)

    same = await service.update_job("a", {"args": [1]}, CLI)

    assert same["version"] == 1
    assert [change[0] for change in await history(service, "a")] == ["add"]


async def test_a_new_trigger_recomputes_the_next_run(db: Database, service: JobService) -> None:
    await service.add_job(spec(trigger={"type": "interval", "hours": 5}), API)
    before = datetime.now(UTC)

    await service.update_job("a", {"trigger": dict(EVERY_30S)}, API)
    after = datetime.now(UTC)

    job = await stored(db, "a")
    assert job is not None and job.next_run_time is not None
    assert first_time_after(before, after, job.next_run_time)
    assert job.trigger["seconds"] == 30


async def test_pause_and_resume_are_committed_and_recorded(
    db: Database, service: JobService, local: Local
) -> None:
    await service.add_job(spec(), API)

    paused = await service.pause_job("a", API, note="maintenance")
    job = await stored(db, "a")
    assert (paused["paused"], paused["next_run_time"], paused["note"]) == (
        True,
        None,
        "maintenance",
    )
    assert job is not None and (job.paused, job.note, job.version) == (True, "maintenance", 2)

    resumed = await service.resume_job("a", CLI)
    job = await stored(db, "a")
    assert (resumed["paused"], resumed["note"]) == (False, None)
    assert job is not None and job.next_run_time is not None and job.next_run_time > EPOCH
    assert job.version == 3
    assert (await history(service, "a"))[1:] == [
        ("pause", "api", "10.0.0.7", {"paused": [False, True], "note": [None, "maintenance"]}),
        ("resume", "cli", None, {"paused": [True, False], "note": ["maintenance", None]}),
    ]
    assert [jobs[0].version for jobs, _ in local.applied_calls] == [1, 2, 3]


async def test_resuming_a_running_job_changes_nothing(db: Database, service: JobService) -> None:
    await service.add_job(spec(), API)

    assert (await service.resume_job("a", API))["version"] == 1
    assert [change[0] for change in await history(service, "a")] == ["add"]


async def test_pausing_a_paused_job_again_with_the_same_note_changes_nothing(
    db: Database, service: JobService
) -> None:
    await service.add_job(spec(), API)
    await service.pause_job("a", API, note="maintenance")

    again = await service.pause_job("a", API, note="maintenance")

    assert again["version"] == 2
    assert [change[0] for change in await history(service, "a")] == ["add", "pause"]


async def test_delete_job_removes_the_row_and_keeps_its_history(
    db: Database, service: JobService, local: Local
) -> None:
    await service.add_job(spec(), API)

    await service.delete_job("a", CLI)

    assert await stored(db, "a") is None
    with pytest.raises(JobNotFound):
        await service.get_job("a")
    assert [change[:3] for change in await history(service, "a")] == [
        ("add", "api", "10.0.0.7"),
        ("remove", "cli", None),
    ]
    assert (await history(service, "a"))[-1][3] == {}
    assert local.applied_calls[-1] == ([], ["a"])


async def test_a_scheduler_pause_is_stored_recorded_and_told_once(
    db: Database, service: JobService, local: Local
) -> None:
    await service.pause_scheduler(API)
    await service.pause_scheduler(API)  # idempotent: no second record

    assert (await service.processes())["state"] == SCHEDULER_PAUSED_STATE
    changes, _ = await SqlStore(db).history(None, 10, 0)
    assert [(c.action, c.job_id, c.source, c.detail) for c in changes] == [
        ("scheduler", None, "api", {"state": ["running", "paused"]})
    ]
    assert local.states == [SCHEDULER_PAUSED_STATE, SCHEDULER_PAUSED_STATE]


@pytest.mark.parametrize(
    ("bad", "error", "field"),
    [
        (spec(func="tests.nowhere:gone"), UnknownFunction, None),
        (spec(trigger={"type": "interval", "seconds": 30, "bogus": 1}), InvalidJob, "bogus"),
        (spec(func=GREET, args=[]), InvalidJob, "args"),
        (spec(args=[object()]), InvalidJob, "args"),
        (spec(max_instances=2, overlap="skip"), InvalidJob, "max_instances"),
    ],
    ids=["unknown-function", "bad-trigger", "wrong-arguments", "not-json", "instances"],
)
async def test_a_bad_job_is_refused_before_anything_is_written(
    db: WatchedDatabase,
    service: JobService,
    local: Local,
    bad: dict[str, Any],
    error: type[Exception],
    field: str | None,
) -> None:
    with pytest.raises(error) as raised:
        await service.add_job(bad, API)

    if field is not None:
        assert isinstance(raised.value, InvalidJob)
        assert any(field in e["field"] for e in raised.value.errors), raised.value.errors
    assert await stored(db, "a") is None
    assert (await service.job_changes("a"))["total"] == 0
    assert local.applied_calls == []


async def test_an_id_that_is_taken_is_refused_and_the_job_kept(
    db: Database, service: JobService
) -> None:
    await service.add_job(spec(args=[1]), API)

    with pytest.raises(JobExists):
        await service.add_job(spec(args=[2]), API)

    job = await stored(db, "a")
    assert job is not None and job.args == [1]
    assert [change[0] for change in await history(service, "a")] == ["add"]


async def test_changes_to_a_missing_job_are_refused(service: JobService) -> None:
    for change in (
        service.update_job("nope", {"args": [1]}, API),
        service.pause_job("nope", API),
        service.resume_job("nope", API),
        service.delete_job("nope", API),
        service.upcoming("nope"),
    ):
        with pytest.raises(JobNotFound):
            await change


async def test_an_update_of_a_field_that_cannot_change_is_refused(service: JobService) -> None:
    await service.add_job(spec(), API)

    with pytest.raises(InvalidJob) as raised:
        await service.update_job("a", {"id": "b", "version": 7}, API)

    assert raised.value.errors == [
        {"field": "id", "message": "cannot be changed"},
        {"field": "version", "message": "cannot be changed"},
    ]


async def test_run_job_needs_a_process_that_runs_jobs(db: Database) -> None:
    service = JobService(SqlStore(db), registry(), Settings())
    await service.add_job(spec(), API)

    with pytest.raises(NotRunning):
        await service.run_job("a", API)


async def test_run_job_asks_the_local_executor_and_records_the_run(
    service: JobService, local: Local
) -> None:
    await service.add_job(spec(), API)

    run = await service.run_job("a", CLI)

    assert (run["id"], run["job_id"]) == ("run-1", "a")
    assert [job.id for job in local.asked] == ["a"]
    assert (await history(service, "a"))[-1] == ("run", "cli", None, {"run": "run-1"})


async def test_upcoming_lists_the_next_times_in_the_triggers_zone(service: JobService) -> None:
    paris = {"type": "interval", "hours": 1, "start_date": EPOCH.isoformat()}
    await service.add_job(spec(trigger={**paris, "timezone": "Europe/Paris"}, paused=True), API)

    after = EPOCH + timedelta(minutes=30)
    times = (await service.upcoming("a", count=3, after=after))["times"]

    # Paused, it is previewed as it would fire resumed; in Paris's winter offset.
    assert times == [
        "2026-01-01T02:00:00+01:00",
        "2026-01-01T03:00:00+01:00",
        "2026-01-01T04:00:00+01:00",
    ]


async def test_upcoming_refuses_a_bad_count_or_a_time_without_offset(service: JobService) -> None:
    await service.add_job(spec(), API)

    with pytest.raises(InvalidJob) as raised:
        await service.upcoming("a", count=0, after=datetime(2026, 1, 1))

    assert [e["field"] for e in raised.value.errors] == ["count", "after"]


async def snapshot(db: Database) -> dict[str, list[Any]]:
    def read(conn: Any) -> dict[str, list[Any]]:
        return {
            table.name: [tuple(row) for row in conn.execute(select(table))]
            for table in metadata.sorted_tables
        }

    return await db.read(read)


async def test_a_read_never_writes(db: WatchedDatabase, service: JobService) -> None:
    await service.add_job(spec("a"), API)
    await service.add_job(spec("b", paused=True), API)
    writes, before = db.writes, await snapshot(db)

    await service.list_jobs()
    await service.list_jobs_json()
    await service.get_job("a")
    await service.job_page(state="paused")
    await service.upcoming("a")
    await service.job_changes("a")
    await service.list_runs(job_id="a")
    await service.scheduler_info()
    await service.processes()

    assert db.writes == writes
    assert await snapshot(db) == before
