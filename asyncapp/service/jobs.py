"""Job use cases shared by the API, the CLI and the dashboard; no Flask here.

Every change is one database transaction that has committed before the
method returns: the job row, a row of change history saying who asked, and
(PostgreSQL) a notification to the other processes.  Only then is this
process's own cache updated, through :class:`Local`; if the transaction
fails, nothing is applied anywhere and :class:`~asyncapp.errors.DatabaseUnavailable`
(HTTP 503) says so.  Reads come from the database too, so every process
answers the same, and a read never writes.

Input is validated before anything is written; methods raise only
:mod:`asyncapp.errors` exceptions for bad input and return JSON-ready dicts.
Call them on a running event loop; the database work happens off it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from apscheduler.util import check_callable_args
from sqlalchemy.engine import Connection

from asyncapp.constants import (
    ADD,
    ALLOW,
    DEFAULT_UPCOMING,
    FAILING_STATUSES,
    JOB_FILTERS,
    JOB_OPTIONS,
    JOB_SORTS,
    MAX_UPCOMING,
    MODIFY,
    PAUSE,
    REMOVE,
    RESUME,
    RUN_NOW,
    RUN_STATUSES,
    SCHEDULER_PAUSED_STATE,
    SCHEDULER_RUNNING,
    SCHEDULER_STOPPED,
    SKIP,
    JobFilter,
    JobSort,
    SchedulerState,
)
from asyncapp.errors import InvalidJob, JobExists, JobNotFound, KeyReused, NotRunning
from asyncapp.model.change import Actor
from asyncapp.model.job import JobDef
from asyncapp.model.run import Run
from asyncapp.model.tasks import Registry
from asyncapp.model.triggers import (
    build_trigger,
    fire_time_after,
    fire_times_after,
    trigger_to_spec,
)
from asyncapp.model.values import storable
from asyncapp.settings import Settings
from asyncapp.store import requests
from asyncapp.store.claims import record_skipped
from asyncapp.store.database import Database
from asyncapp.store.jobs import JobStore
from asyncapp.store.processes import Process, read_live
from asyncapp.store.runs import failing_since, get_run, latest_runs, select_attempts, select_runs

#: Where ``POST /scheduler/jobs`` keeps the answers to its idempotency keys.
ADD_SCOPE = "add_job"


@dataclass(frozen=True)
class Idempotency:
    """A request's ``Idempotency-Key`` and the fingerprint of what it asked."""

    key: str
    fingerprint: str


def keyed_run_id(job_id: str, key: str) -> str:
    """The id of the run that "run now" of ``job_id`` with idempotency ``key`` claims."""
    return hashlib.sha256(f"{job_id}\0{key}".encode()).hexdigest()[:32]


#: Job fields a PATCH may change.
CHANGEABLE = ("func", "args", "kwargs", "trigger", "paused", *JOB_OPTIONS)
#: Fields whose changes the history records (what the API shows of a job).
HISTORY_FIELDS = ("func", "args", "kwargs", "trigger", *JOB_OPTIONS, "paused", "note")


class Local(Protocol):
    """What a process that runs jobs adds to the service: its cache and its executor."""

    def applied(self, jobs: Iterable[JobDef], removed: Iterable[str]) -> None:
        """These committed rows replace the cached ones; ``removed`` are gone."""

    def state_applied(self, state: SchedulerState) -> None:
        """The scheduler-wide state was committed as ``state``."""

    async def run_now(self, job: JobDef, *, run_id: str | None = None) -> Run:
        """Claim and start a run of ``job`` now; returns it as started.

        A run of ``run_id`` claimed before is returned as it is, and nothing starts."""

    def info(self) -> dict[str, Any]:
        """This process as ``GET /scheduler`` shows it."""


def _listed(live: list[Process], clock: float, local: dict[str, Any]) -> list[dict[str, Any]]:
    """The live processes, this one (``local``) as it is now rather than as its heartbeat
    row last said (at join, right after start, the row predates the scheduler)."""
    return [
        process.to_dict(clock) | (local if process.id == local.get("id") else {})
        for process in live
    ]


class JobService:
    """Operations on the jobs, runs and scheduler state in one database."""

    def __init__(
        self,
        db: Database,
        tasks: Registry,
        settings: Settings,
        *,
        local: Local | None = None,
    ) -> None:
        self.db = db
        self.store = JobStore(db)
        self.tasks = tasks
        self.settings = settings
        self.local = local

    # -- the scheduler ------------------------------------------------------------

    async def scheduler_info(self) -> dict[str, Any]:
        """Flask-APScheduler's scheduler info, plus the stored state and the processes."""

        def read(conn: Connection) -> tuple[str, list[JobDef], list[Process], float]:
            return (
                self.store.scheduler_state(conn),
                self.store.all(conn),
                read_live(conn),
                self.db.clock(conn),
            )

        state, jobs, live, clock = await self.db.read(read)
        local = self.local.info() if self.local is not None else {}
        return {
            "current_host": self.settings.node_name,
            "allowed_hosts": ["*"],
            "running": state == SCHEDULER_RUNNING,
            "state": state,
            "jobs": len(jobs),
            "broken_jobs": sum(1 for job in jobs if self._broken(job)),
            "runs_in_progress": local.get("runs_in_progress", 0),
            "process": local,
            "processes": _listed(live, clock, local),
        }

    async def processes(self) -> dict[str, Any]:
        """The scheduler-wide state, this process, and the live processes with their
        heartbeat ages by the database's clock now: :meth:`scheduler_info` without
        reading the jobs, cheap enough to poll."""

        def read(conn: Connection) -> tuple[str, list[Process], float]:
            return self.store.scheduler_state(conn), read_live(conn), self.db.clock(conn)

        state, live, clock = await self.db.read(read)
        local = self.local.info() if self.local is not None else {}
        return {"state": state, "process": local, "processes": _listed(live, clock, local)}

    async def pause_scheduler(self, actor: Actor) -> None:
        """Stop firing in every process until resumed (state ``paused``); runs go on."""
        await self._set_state(SCHEDULER_PAUSED_STATE, actor)

    async def resume_scheduler(self, actor: Actor) -> None:
        await self._set_state(SCHEDULER_RUNNING, actor)

    async def start_scheduler(self, actor: Actor) -> None:
        """Undo :meth:`shutdown_scheduler`."""
        await self._set_state(SCHEDULER_RUNNING, actor)

    async def shutdown_scheduler(self, actor: Actor) -> None:
        """Stop firing in every process (state ``stopped``) until started; runs go on.

        The processes stay up, so jobs can still be listed and changed.
        """
        await self._set_state(SCHEDULER_STOPPED, actor)

    async def _set_state(self, state: SchedulerState, actor: Actor) -> None:
        def change(conn: Connection) -> None:
            self.store.begin_change(conn)
            before = self.store.set_scheduler_state(conn, state, time.time())
            if before != state:
                self.store.record(
                    conn, action=state, job_id=None, actor=actor, detail={"state": [before, state]}
                )

        await self.db.write(change)
        if self.local is not None:
            self.local.state_applied(state)

    def functions(self) -> list[str]:
        """References of the registered ``@task`` functions."""
        return self.tasks.refs()

    # -- reading jobs -------------------------------------------------------------

    async def list_jobs(self) -> list[dict[str, Any]]:
        """Every job, soonest next run first (paused last), as the API shows it."""
        return await self.db.read(lambda conn: [self._to_api(job) for job in self.store.all(conn)])

    async def list_jobs_json(self) -> str:
        """:meth:`list_jobs` as JSON text, built on the database's read thread.

        Each job becomes text as soon as it is read, so the 10,000 dicts of a
        large listing are never alive at once: alive together, they made the
        garbage collector run full collections of 30-140 ms, holding the GIL
        and with it the event loop (measured with 10,000 jobs).
        """

        def read(conn: Connection) -> str:
            parts = [
                json.dumps(self._to_api(job), ensure_ascii=False) for job in self.store.each(conn)
            ]
            return "[" + ",".join(parts) + "]"

        return await self.db.read(read)

    async def job_page(
        self,
        *,
        search: str | None = None,
        state: JobFilter | None = None,
        limit: int = 50,
        offset: int = 0,
        sort: JobSort = "next",
        descending: bool = False,
    ) -> dict[str, Any]:
        """One page of :meth:`list_jobs`, paged, filtered and ordered in the database.

        ``{"jobs": [...], "total": N, "limit": ..., "offset": ...}``; each job is
        the API's job JSON plus ``last_run`` (the run or missed record with the
        latest scheduled time, or None) and ``failing_since`` (ISO 8601: the
        scheduled time of the first failure after the latest success, for a job
        whose last run failed; else None).  ``search`` matches part of the id,
        ignoring case; ``state`` is one of :data:`~asyncapp.constants.JOB_FILTERS`;
        ``sort`` one of :data:`~asyncapp.constants.JOB_SORTS`.  Only the page's
        rows are read, so 10,000 jobs cost what 50 do.

        :raises InvalidJob: for a bad state, sort, limit or offset.
        """
        errors = []
        if state is not None and state not in JOB_FILTERS:
            errors.append({"field": "state", "message": f"must be one of {', '.join(JOB_FILTERS)}"})
        if sort not in JOB_SORTS:
            errors.append({"field": "sort", "message": f"must be one of {', '.join(JOB_SORTS)}"})
        if not 1 <= limit <= 1000:
            errors.append({"field": "limit", "message": "must be between 1 and 1000"})
        if offset < 0:
            errors.append({"field": "offset", "message": "must be >= 0"})
        if errors:
            raise InvalidJob(errors)
        registered = self.tasks.refs()

        def read(conn: Connection) -> tuple[list[JobDef], int, dict[str, Run], dict[str, datetime]]:
            jobs, total = self.store.page(
                conn,
                search=search,
                state=state,
                registered=registered,
                limit=limit,
                offset=offset,
                sort=sort,
                descending=descending,
            )
            last = latest_runs(conn, [job.id for job in jobs])
            failing = [job_id for job_id, run in last.items() if run.status in FAILING_STATUSES]
            return jobs, total, last, failing_since(conn, failing)

        jobs, total, last, since = await self.db.read(read)
        items = [
            {
                **self._to_api(job),
                "last_run": last[job.id].to_dict() if job.id in last else None,
                "failing_since": since[job.id].isoformat() if job.id in since else None,
            }
            for job in jobs
        ]
        return {"jobs": items, "total": total, "limit": limit, "offset": offset}

    async def job_counts(self) -> dict[str, int]:
        """How many jobs each state filter of :meth:`job_page` keeps, and ``all``
        (a job may count in several: paused and failing)."""
        registered = self.tasks.refs()
        return await self.db.read(lambda conn: self.store.counts(conn, registered))

    async def scheduler_status(self) -> dict[str, Any]:
        """``{"state": ..., "change": ...}``: the stored scheduler-wide state and its
        latest change as the change history shows it (who paused or resumed it, and
        when; None if it never changed)."""

        def read(conn: Connection) -> tuple[str, Any]:
            return self.store.scheduler_state(conn), self.store.scheduler_change(conn)

        state, change = await self.db.read(read)
        return {"state": state, "change": None if change is None else change.to_dict()}

    async def manual_runs(self, job_id: str, limit: int = 200) -> set[str]:
        """Ids of the runs of ``job_id`` started outside its schedule ("run now"), among
        its latest ``limit`` changes."""
        changes, _ = await self.db.read(lambda conn: self.store.history(conn, job_id, limit, 0))
        return {str(change.detail.get("run")) for change in changes if change.action == RUN_NOW}

    async def get_job(self, job_id: str) -> dict[str, Any]:
        """:raises JobNotFound:"""
        job = await self.db.read(lambda conn: self.store.get(conn, job_id))
        if job is None:
            raise JobNotFound(job_id)
        return self._to_api(job)

    async def upcoming(
        self, job_id: str, count: int = DEFAULT_UPCOMING, after: datetime | None = None
    ) -> dict[str, Any]:
        """``{"times": [...]}``: the job's next ``count`` fire times strictly after ``after``.

        ``after`` defaults to now.  The times come from the function the
        scheduler fires with (:func:`~asyncapp.model.triggers.fire_times_after`), so
        they follow its daylight saving time policy, and are ISO 8601 strings in
        the trigger's time zone with the offset in force at each.  A paused job
        is previewed too, as the times it would fire at once resumed; a job
        whose schedule is over lists none.

        :raises JobNotFound:
        :raises InvalidJob: for a ``count`` outside 1-100, an ``after`` without a
            UTC offset, or a job whose stored definition cannot be read.
        """
        errors = []
        if not 1 <= count <= MAX_UPCOMING:
            errors.append({"field": "count", "message": f"must be between 1 and {MAX_UPCOMING}"})
        if after is not None and after.utcoffset() is None:
            errors.append({"field": "after", "message": "must have a UTC offset"})
        if errors:
            raise InvalidJob(errors)
        start = datetime.now(UTC) if after is None else after.astimezone(UTC)
        job = await self.db.read(lambda conn: self._existing(conn, job_id, usable=False))
        if job.damaged is not None:
            raise InvalidJob([{"field": "trigger", "message": job.damaged}])
        trigger = build_trigger(job.trigger, self.settings.zone, jitter=False)
        # Off the loop: a sparse cron expression can take APScheduler a while.
        times = await asyncio.to_thread(fire_times_after, trigger, start, count)
        return {"times": [job.local(moment) for moment in times]}

    async def job_changes(self, job_id: str, limit: int = 50, offset: int = 0) -> dict[str, Any]:
        """The change history of one job, newest first (kept after the job is removed)."""
        changes, total = await self.db.read(
            lambda conn: self.store.history(conn, job_id, limit, offset)
        )
        return {
            "changes": [change.to_dict() for change in changes],
            "total": total,
            "limit": limit,
            "offset": offset,
        }

    # -- changing jobs ------------------------------------------------------------

    async def add_job(
        self, spec: dict[str, Any], actor: Actor, *, idempotency: Idempotency | None = None
    ) -> dict[str, Any]:
        """Schedule a new job from a validated spec (see ``docs/api.md``).

        With ``idempotency``, the job JSON answered is stored in the same transaction
        under the key; the same key again gets that answer again and adds nothing
        (a retry after an answer that was lost), the key with another request
        raises :class:`~asyncapp.errors.KeyReused`.

        :raises UnknownFunction, InvalidJob, JobExists, KeyReused:
        """
        job = self.new_job(spec, check_args=False)

        def change(conn: Connection) -> JobDef | dict[str, Any]:
            self.store.begin_change(conn)
            if idempotency is not None:
                answered = requests.find(conn, ADD_SCOPE, idempotency.key)
                if answered is not None:
                    if answered.fingerprint != idempotency.fingerprint:
                        raise KeyReused()
                    return answered.body
            if self.store.get(conn, job.id) is not None:
                raise JobExists(job.id)
            self._check_call(job.func, job.args, job.kwargs)
            if self.store.count(conn) >= self.settings.max_jobs:
                raise InvalidJob(
                    [
                        {
                            "field": "id",
                            "message": f"the scheduler holds its limit of {self.settings.max_jobs} "
                            "jobs (ASYNCAPP_MAX_JOBS); remove some first",
                        }
                    ]
                )
            now = time.time()
            added = self.store.write(
                conn, job, new=True, action=ADD, actor=actor, detail=_diff(None, job), now=now
            )
            if idempotency is not None:
                answer = requests.Answer(idempotency.fingerprint, 200, self._to_api(added))
                requests.save(conn, ADD_SCOPE, idempotency.key, answer, now)
            return added

        added = await self.db.write(change)
        if isinstance(added, dict):
            return added
        self._applied([added])
        return self._to_api(added)

    async def update_job(
        self, job_id: str, changes: dict[str, Any], actor: Actor
    ) -> dict[str, Any]:
        """Change a job; ``trigger`` replaces the whole trigger and recomputes the next run.

        :raises JobNotFound, UnknownFunction, InvalidJob:
        """
        unknown = sorted(set(changes) - set(CHANGEABLE))
        if unknown:
            raise InvalidJob([{"field": key, "message": "cannot be changed"} for key in unknown])

        return await self._change_job(
            job_id,
            actor,
            MODIFY,
            lambda job: self._changed(job, changes),
            usable="func" not in changes,
        )

    async def delete_job(self, job_id: str, actor: Actor) -> None:
        """Remove a job, broken or not; its run history stays. :raises JobNotFound:"""

        def change(conn: Connection) -> None:
            self.store.begin_change(conn)
            job = self.store.get(conn, job_id, lock=True)
            if job is None:
                raise JobNotFound(job_id)
            self.store.delete(conn, job_id)
            self.store.record(conn, action=REMOVE, job_id=job_id, actor=actor, detail={})

        await self.db.write(change)
        if self.local is not None:
            self.local.applied([], [job_id])

    async def pause_job(self, job_id: str, actor: Actor, note: str | None = None) -> dict[str, Any]:
        """Stop firing a job until resumed, optionally saying why.

        :raises JobNotFound, InvalidJob:
        """
        return await self._change_job(
            job_id,
            actor,
            PAUSE,
            lambda job: (
                job
                if job.paused and job.note == storable(note, 500)
                else job.changed(
                    next_run_time=None, note=storable(note, 500), version=job.version + 1
                )
            ),
        )

    async def resume_job(self, job_id: str, actor: Actor) -> dict[str, Any]:
        """Fire a paused job again from its next time after now. :raises JobNotFound, InvalidJob:"""

        def resumed(job: JobDef) -> JobDef:
            if not job.paused:
                return job
            return job.changed(
                next_run_time=self._first_time(job.trigger), note=None, version=job.version + 1
            )

        return await self._change_job(job_id, actor, RESUME, resumed)

    async def _change_job(
        self,
        job_id: str,
        actor: Actor,
        action: str,
        edit: Callable[[JobDef], JobDef],
        usable: bool = True,
    ) -> dict[str, Any]:
        """Change one job in one transaction: lock its row, ``edit`` it, store the result
        and record ``action`` in its history, unless ``edit`` changed nothing.

        :raises JobNotFound, InvalidJob:
        """

        def change(conn: Connection) -> JobDef:
            self.store.begin_change(conn)
            job = self._existing(conn, job_id, lock=True, usable=usable)
            updated = edit(job)
            if updated == job:
                return job
            self._record_skipped(conn, job, updated)
            return self.store.write(
                conn,
                updated,
                new=False,
                action=action,
                actor=actor,
                detail=_diff(job, updated),
                now=time.time(),
            )

        updated = await self.db.write(change)
        self._applied([updated])
        return self._to_api(updated)

    async def run_job(
        self, job_id: str, actor: Actor, *, idempotency_key: str | None = None
    ) -> dict[str, Any]:
        """Claim and start a run of a job now, outside its schedule; returns the started run.

        Does not wait for the job to finish.  With ``idempotency_key``, the run's id
        is derived from the job and the key, and the claim is made under it: the same
        key again returns that run as it is now and starts nothing, whether or not the
        first answer arrived.

        :raises JobNotFound, InvalidJob, JobBusy, NotRunning (in a process that does not
            run jobs):
        """
        if self.local is None:
            raise NotRunning("running a job")
        job = await self.db.read(lambda conn: self._existing(conn, job_id))
        run_id = None if idempotency_key is None else keyed_run_id(job_id, idempotency_key)
        earlier = None
        if run_id is not None:
            earlier = await self.db.read(lambda conn: get_run(conn, run_id))
        # Claimed again even when found: a claim whose answer was lost left its run
        # unstarted, and this starts it (a run already going is returned as it is).
        run = await self.local.run_now(job, run_id=run_id)
        if earlier is not None:
            return run.to_dict()

        def note(conn: Connection) -> None:
            self.store.record(
                conn, action=RUN_NOW, job_id=job_id, actor=actor, detail={"run": run.id}
            )

        await self.db.write(note)
        return run.to_dict()

    async def apply_declarations(
        self, declared: list[JobDef], owned: set[str], actor: Actor
    ) -> tuple[list[str], list[str]]:
        """Upsert the jobs the code declares; remove ``owned`` ones it no longer declares.

        A job keeps its paused state and its next run when the code did not
        change; a trigger, arguments or options changed in code replace the stored
        ones.  Returns (changed ids, removed ids).
        """

        def change(conn: Connection) -> tuple[list[JobDef], list[str]]:
            self.store.begin_change(conn)
            written: list[JobDef] = []
            now = time.time()
            for job in declared:
                stored = self.store.get(conn, job.id, lock=True)
                if stored is None:
                    detail = _diff(None, job)
                    written.append(
                        self.store.write(
                            conn, job, new=True, action=ADD, actor=actor, detail=detail, now=now
                        )
                    )
                elif stored.declared != job.declared or stored.damaged is not None:
                    updated = job.changed(version=stored.version + 1, note=stored.note)
                    if stored.paused:
                        updated = updated.changed(next_run_time=None)
                    elif _same_trigger(stored, job):
                        # The stored next time may be due and unclaimed (no process ran
                        # across it during a deploy): the new definition fires it, or
                        # the claim records why not.  The stored trigger keeps the
                        # interval's start, so the times stay those already planned.
                        updated = updated.changed(
                            trigger=stored.trigger, next_run_time=stored.next_run_time
                        )
                    else:
                        self._record_skipped(conn, stored, updated)
                    detail = _diff(stored, updated)
                    written.append(
                        self.store.write(
                            conn, updated, new=False, action=MODIFY, actor=actor, detail=detail,
                            now=now,
                        )
                    )  # fmt: skip
            removed = []
            for job_id in sorted(owned):
                if self.store.delete(conn, job_id):
                    self.store.record(conn, action=REMOVE, job_id=job_id, actor=actor, detail={})
                    removed.append(job_id)
            return written, removed

        written, removed = await self.db.write(change)
        if self.local is not None:
            self.local.applied(written, removed)
        return [job.id for job in written], removed

    # -- runs ---------------------------------------------------------------------

    async def list_runs(
        self,
        job_id: str | None = None,
        status: str | None = None,
        limit: int = 50,
        offset: int = 0,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        job_contains: str | None = None,
    ) -> dict[str, Any]:
        """Runs and missed records, newest scheduled time first.

        ``since`` and ``until`` (aware) keep the scheduled times in [since, until);
        ``job_contains`` the runs of jobs whose id contains it, ignoring case.

        :raises InvalidJob: for a bad status, limit or offset.
        """
        errors = []
        if status is not None and status not in RUN_STATUSES:
            errors.append(
                {"field": "status", "message": f"must be one of {', '.join(RUN_STATUSES)}"}
            )
        if not 1 <= limit <= 1000:
            errors.append({"field": "limit", "message": "must be between 1 and 1000"})
        if offset < 0:
            errors.append({"field": "offset", "message": "must be >= 0"})
        if errors:
            raise InvalidJob(errors)

        def read(conn: Connection) -> tuple[list[Run], int, dict[str, list[dict[str, Any]]]]:
            runs, total = select_runs(
                conn,
                job_id=job_id,
                status=status,
                limit=limit,
                offset=offset,
                since=since,
                until=until,
                job_contains=job_contains,
            )
            earlier = select_attempts(conn, [run.id for run in runs if run.attempt > 1])
            return runs, total, earlier

        runs, total, earlier = await self.db.read(read)
        items = []
        for run in runs:
            item = run.to_dict()
            if run.id in earlier:
                item["attempts"] = earlier[run.id]
            items.append(item)
        return {"runs": items, "total": total, "limit": limit, "offset": offset}

    # -- helpers ------------------------------------------------------------------

    def _record_skipped(self, conn: Connection, before: JobDef, after: JobDef) -> None:
        """Record the due times ``before`` had that the change to ``after`` passes over."""
        record_skipped(
            conn,
            self.db,
            before,
            after,
            zone=self.settings.zone,
            node=self.settings.node_name,
            process_timeout=self.settings.process_timeout,
        )

    def _broken(self, job: JobDef) -> bool:
        return job.damaged is not None or job.func not in self.tasks

    def _to_api(self, job: JobDef) -> dict[str, Any]:
        return job.to_api(broken=self._broken(job))

    def _applied(self, jobs: list[JobDef]) -> None:
        if self.local is not None:
            self.local.applied(jobs, [])

    def _existing(
        self, conn: Connection, job_id: str, *, lock: bool = False, usable: bool = True
    ) -> JobDef:
        job = self.store.get(conn, job_id, lock=lock)
        if job is None:
            raise JobNotFound(job_id)
        if usable and self._broken(job):
            raise InvalidJob(
                [{"field": "func", "message": "this job's function is not registered any more"}]
            )
        return job

    def _first_time(self, spec: dict[str, Any]) -> datetime | None:
        trigger = build_trigger(spec, self.settings.zone, jitter=False)
        return fire_time_after(trigger, None, datetime.now(UTC))

    def _trigger_spec(self, spec: dict[str, Any]) -> dict[str, Any]:
        """The full stored form of a requested trigger (start dates resolved now)."""
        return trigger_to_spec(build_trigger(spec, self.settings.zone))

    def _check_size(self, job: JobDef) -> None:
        """Arguments must be JSON, and at most ``ASYNCAPP_MAX_ARGS_BYTES`` of it.

        Every process holds every job in memory (about 2.4 bytes per byte of
        JSON), and every change notification reloads it.
        """
        _check_json(job)
        size = len(json.dumps([job.args, job.kwargs], separators=(",", ":")).encode())
        if size > self.settings.max_args_bytes:
            raise InvalidJob(
                [
                    {
                        "field": "args",
                        "message": f"args and kwargs take {size} bytes of JSON; at most "
                        f"{self.settings.max_args_bytes} are allowed (ASYNCAPP_MAX_ARGS_BYTES)",
                    }
                ]
            )

    def _check_call(self, func_ref: str, args: list[Any], kwargs: dict[str, Any]) -> None:
        func = self.tasks.resolve(func_ref).func
        try:
            check_callable_args(func, args, kwargs)
        except ValueError as exc:
            # APScheduler names the parameters; the caller can fix exactly that.
            raise InvalidJob([{"field": "args", "message": str(exc)}]) from None

    def new_job(self, spec: dict[str, Any], *, check_args: bool = True) -> JobDef:
        """The job a validated spec describes, not stored yet.

        :raises UnknownFunction, InvalidJob:
        """
        func = spec["func"]
        self.tasks.resolve(func)  # UnknownFunction before anything else
        job_id = spec.get("id") or uuid.uuid4().hex
        args, kwargs = list(spec.get("args") or []), dict(spec.get("kwargs") or {})
        if check_args:
            self._check_call(func, args, kwargs)
        trigger = self._trigger_spec(spec["trigger"])
        job = JobDef(
            id=job_id,
            func=func,
            trigger=trigger,
            name=spec.get("name") or job_id,
            args=args,
            kwargs=kwargs,
            misfire_grace_time=spec.get("misfire_grace_time", self.settings.misfire_grace_time),
            max_instances=spec.get("max_instances", 1),
            coalesce=spec.get("coalesce", self.settings.coalesce),
            # Several instances without a policy: what APScheduler's max_instances means.
            overlap=spec.get("overlap") or (ALLOW if spec.get("max_instances", 1) > 1 else SKIP),
            timeout=spec.get("timeout", self.settings.job_timeout),
            retries=spec.get("retries", self.settings.job_retries),
            rerun_interrupted=spec.get("rerun_interrupted", False),
            declared=spec.get("declared"),
            version=1,
        )
        _check_options(job)
        self._check_size(job)
        if spec.get("paused"):
            return job
        return job.changed(next_run_time=self._first_time(trigger))

    def _changed(self, job: JobDef, changes: dict[str, Any]) -> JobDef:
        """``job`` with ``changes`` applied and validated, version bumped if anything changed."""
        values: dict[str, Any] = {}
        for key in JOB_OPTIONS:
            if changes.get(key) is not None and changes[key] != getattr(job, key):
                values[key] = changes[key]
        if "timeout" in changes and changes["timeout"] is None:
            values["timeout"] = None
        if changes.get("max_instances", 1) > 1 and "overlap" not in changes:
            values["overlap"] = ALLOW
        if "args" in changes:
            values["args"] = list(changes["args"] or [])
        if "kwargs" in changes:
            values["kwargs"] = dict(changes["kwargs"] or {})
        if changes.get("func") is not None:
            values["func"] = changes["func"]
        trigger = job.trigger
        if changes.get("trigger") is not None:
            trigger = values["trigger"] = self._trigger_spec(changes["trigger"])
        updated = job.changed(**values)
        self._check_call(updated.func, updated.args, updated.kwargs)
        _check_options(updated)
        self._check_size(updated)
        paused = changes.get("paused", job.paused)
        if paused:
            updated = updated.changed(next_run_time=None)
        elif job.paused or "trigger" in values:
            updated = updated.changed(next_run_time=self._first_time(trigger), note=None)
        if updated == job:
            return job
        return updated.changed(version=job.version + 1)


def _same_trigger(stored: JobDef, declared: JobDef) -> bool:
    """Whether the code declares the trigger it declared when ``stored`` was written."""
    if stored.damaged is not None or stored.declared is None or declared.declared is None:
        return False
    return bool(stored.declared.get("trigger") == declared.declared.get("trigger"))


def _check_options(job: JobDef) -> None:
    if job.max_instances > 1 and job.overlap != ALLOW:
        raise InvalidJob(
            [
                {
                    "field": "max_instances",
                    "message": f"several instances need overlap 'allow' (this job's is "
                    f"{job.overlap!r}: at most one run at a time)",
                }
            ]
        )


def _check_json(job: JobDef) -> None:
    try:
        job.data()
    except (TypeError, ValueError):
        raise InvalidJob(
            [{"field": "args", "message": "args and kwargs must be JSON values"}]
        ) from None


def _diff(before: JobDef | None, after: JobDef) -> dict[str, Any]:
    """``{field: [old, new]}`` for what differs (every field when ``before`` is None)."""
    detail: dict[str, Any] = {}
    for name in HISTORY_FIELDS:
        new = getattr(after, name)
        old = None if before is None else getattr(before, name)
        if before is None or old != new:
            detail[name] = [old, new]
    return detail
