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
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from apscheduler.util import check_callable_args

from asyncapp.constants import (
    ALLOW,
    DEFAULT_UPCOMING,
    JOB_FILTERS,
    JOB_OPTIONS,
    JOB_SORTS,
    MAX_UPCOMING,
    MODIFY,
    PAUSE,
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
from asyncapp.errors import InvalidJob, JobNotFound, KeyReused, NotRunning
from asyncapp.model.change import Actor
from asyncapp.model.job import JobDef
from asyncapp.model.run import Run
from asyncapp.model.tasks import Registry
from asyncapp.model.triggers import (
    build_trigger,
    fire_time_after,
    fire_times_after,
    resolve_trigger,
)
from asyncapp.model.values import storable
from asyncapp.settings import Settings
from asyncapp.store.interface import Answer, Process, Skipping, Store

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


#: The most items one page of jobs or runs holds.
MAX_PAGE = 1000
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
        store: Store,
        tasks: Registry,
        settings: Settings,
        *,
        local: Local | None = None,
    ) -> None:
        self.store = store
        self.tasks = tasks
        self.settings = settings
        self.local = local
        #: How a change records the due times it passes over (``record_skipped``).
        self._skipping = Skipping(
            zone=settings.zone, node=settings.node_name, process_timeout=settings.process_timeout
        )

    # -- the scheduler ------------------------------------------------------------

    async def scheduler_info(self) -> dict[str, Any]:
        """Flask-APScheduler's scheduler info, plus the stored state and the processes."""
        seen = await self.store.overview(jobs=True)
        state, jobs = seen.state, seen.jobs
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
            "processes": _listed(seen.live, seen.clock, local),
        }

    async def processes(self) -> dict[str, Any]:
        """The scheduler-wide state, this process, and the live processes with their
        heartbeat ages by the database's clock now: :meth:`scheduler_info` without
        reading the jobs, cheap enough to poll."""
        seen = await self.store.overview()
        local = self.local.info() if self.local is not None else {}
        return {
            "state": seen.state,
            "process": local,
            "processes": _listed(seen.live, seen.clock, local),
        }

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
        await self.store.set_scheduler_state(state, actor)
        if self.local is not None:
            self.local.state_applied(state)

    def functions(self) -> list[str]:
        """References of the registered ``@task`` functions."""
        return self.tasks.refs()

    # -- reading jobs -------------------------------------------------------------

    async def list_jobs(self) -> list[dict[str, Any]]:
        """Every job, soonest next run first (paused last), as the API shows it."""
        return [self._to_api(job) for job in await self.store.jobs()]

    async def list_jobs_json(self) -> str:
        """:meth:`list_jobs` as JSON text, built on the database's read thread.

        Each job becomes text as soon as it is read, so the 10,000 dicts of a
        large listing are never alive at once: alive together, they made the
        garbage collector run full collections of 30-140 ms, holding the GIL
        and with it the event loop (measured with 10,000 jobs).
        """
        parts = await self.store.map_jobs(
            lambda job: json.dumps(self._to_api(job), ensure_ascii=False)
        )
        return "[" + ",".join(parts) + "]"

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
        errors.extend(_page_errors(limit, offset))
        if errors:
            raise InvalidJob(errors)
        registered = self.tasks.refs()
        page = await self.store.job_page(
            search=search,
            state=state,
            registered=registered,
            limit=limit,
            offset=offset,
            sort=sort,
            descending=descending,
        )
        last, since = page.last, page.failing_since
        items = [
            {
                **self._to_api(job),
                "last_run": last[job.id].to_dict() if job.id in last else None,
                "failing_since": since[job.id].isoformat() if job.id in since else None,
            }
            for job in page.jobs
        ]
        return {"jobs": items, "total": page.total, "limit": limit, "offset": offset}

    async def job_counts(self) -> dict[str, int]:
        """How many jobs each state filter of :meth:`job_page` keeps, and ``all``
        (a job may count in several: paused and failing)."""
        registered = self.tasks.refs()
        return await self.store.job_counts(registered)

    async def scheduler_status(self) -> dict[str, Any]:
        """``{"state": ..., "change": ...}``: the stored scheduler-wide state and its
        latest change as the change history shows it (who paused or resumed it, and
        when; None if it never changed)."""
        state, change = await self.store.scheduler_status()
        return {"state": state, "change": None if change is None else change.to_dict()}

    async def manual_runs(self, job_id: str, limit: int = 200) -> set[str]:
        """Ids of the runs of ``job_id`` started outside its schedule ("run now"), among
        its latest ``limit`` changes."""
        changes, _ = await self.store.history(job_id, limit, 0)
        return {str(change.detail.get("run")) for change in changes if change.action == RUN_NOW}

    async def get_job(self, job_id: str) -> dict[str, Any]:
        """:raises JobNotFound:"""
        return self._to_api(await self._existing(job_id, usable=False))

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
        job = await self._existing(job_id, usable=False)
        if job.damaged is not None:
            raise InvalidJob([{"field": "trigger", "message": job.damaged}])
        trigger = build_trigger(job.trigger, self.settings.zone, jitter=False)
        # Off the loop: a sparse cron expression can take APScheduler a while.
        times = await asyncio.to_thread(fire_times_after, trigger, start, count)
        return {"times": [job.local(moment) for moment in times]}

    async def job_changes(self, job_id: str, limit: int = 50, offset: int = 0) -> dict[str, Any]:
        """The change history of one job, newest first (kept after the job is removed)."""
        changes, total = await self.store.history(job_id, limit, offset)
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

        def check(count: int) -> None:
            self._check_call(job.func, job.args, job.kwargs)
            if count >= self.settings.max_jobs:
                raise InvalidJob(
                    [
                        {
                            "field": "id",
                            "message": f"the scheduler holds its limit of {self.settings.max_jobs} "
                            "jobs (ASYNCAPP_MAX_JOBS); remove some first",
                        }
                    ]
                )

        fingerprint = None if idempotency is None else idempotency.fingerprint
        added = await self.store.add_job(
            job,
            actor=actor,
            detail=_diff(None, job),
            check=check,
            key=None if idempotency is None else (ADD_SCOPE, idempotency.key),
            answer=lambda added: Answer(str(fingerprint), 200, self._to_api(added)),
        )
        if isinstance(added, Answer):
            if added.fingerprint != fingerprint:
                raise KeyReused()
            return added.body
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
        await self.store.remove_job(job_id, actor)
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

        def change(job: JobDef) -> tuple[JobDef, dict[str, Any]] | None:
            self._check_usable(job, usable)
            updated = edit(job)
            return None if updated == job else (updated, _diff(job, updated))

        updated = await self.store.change_job(
            job_id, action=action, actor=actor, edit=change, skipped=self._skipping
        )
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
        job = await self._existing(job_id)
        run_id = None if idempotency_key is None else keyed_run_id(job_id, idempotency_key)
        earlier = None
        if run_id is not None:
            earlier = await self.store.run(run_id)
        # Claimed again even when found: a claim whose answer was lost left its run
        # unstarted, and this starts it (a run already going is returned as it is).
        run = await self.local.run_now(job, run_id=run_id)
        if earlier is not None:
            return run.to_dict()
        await self.store.record_change(
            action=RUN_NOW, job_id=job_id, actor=actor, detail={"run": run.id}
        )
        return run.to_dict()

    async def apply_declarations(
        self, declared: list[JobDef], owned: set[str], actor: Actor
    ) -> tuple[list[str], list[str]]:
        """Upsert the jobs the code declares; remove ``owned`` ones it no longer declares.

        A job keeps its paused state and its next run when the code did not
        change; a trigger, arguments or options changed in code replace the stored
        ones.  Returns (changed ids, removed ids).
        """

        def merge(stored: JobDef | None, job: JobDef) -> tuple[JobDef, dict[str, Any]] | None:
            if stored is None:
                return job, _diff(None, job)
            if stored.declared == job.declared and stored.damaged is None:
                return None
            updated = job.changed(version=stored.version + 1, note=stored.note)
            if stored.paused:
                updated = updated.changed(next_run_time=None)
            elif _same_trigger(stored, job):
                # The stored next time may be due and unclaimed (no process ran across
                # it during a deploy): the new definition fires it, or the claim records
                # why not.  The stored trigger keeps the interval's start, so the times
                # stay those already planned.  (Times a new trigger passes over are
                # recorded by the store: ``skipped``.)
                updated = updated.changed(
                    trigger=stored.trigger, next_run_time=stored.next_run_time
                )
            return updated, _diff(stored, updated)

        written, removed = await self.store.save_jobs(
            declared, sorted(owned), actor=actor, merge=merge, skipped=self._skipping
        )
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
        errors.extend(_page_errors(limit, offset))
        if errors:
            raise InvalidJob(errors)
        page = await self.store.run_page(
            job_id=job_id,
            status=status,
            limit=limit,
            offset=offset,
            since=since,
            until=until,
            job_contains=job_contains,
        )
        items = []
        for run in page.runs:
            item = run.to_dict()
            if run.id in page.attempts:
                item["attempts"] = page.attempts[run.id]
            items.append(item)
        return {"runs": items, "total": page.total, "limit": limit, "offset": offset}

    # -- helpers ------------------------------------------------------------------

    def _broken(self, job: JobDef) -> bool:
        return job.damaged is not None or job.func not in self.tasks

    def _to_api(self, job: JobDef) -> dict[str, Any]:
        return job.to_api(broken=self._broken(job))

    def _applied(self, jobs: list[JobDef]) -> None:
        if self.local is not None:
            self.local.applied(jobs, [])

    async def _existing(self, job_id: str, *, usable: bool = True) -> JobDef:
        job = await self.store.job(job_id)
        if job is None:
            raise JobNotFound(job_id)
        self._check_usable(job, usable)
        return job

    def _check_usable(self, job: JobDef, usable: bool = True) -> None:
        if usable and self._broken(job):
            raise InvalidJob(
                [{"field": "func", "message": "this job's function is not registered any more"}]
            )

    def _first_time(self, spec: dict[str, Any]) -> datetime | None:
        """The first fire time after now of a stored trigger spec."""
        trigger = build_trigger(spec, self.settings.zone, jitter=False)
        return fire_time_after(trigger, None, datetime.now(UTC))

    def _resolve(self, spec: dict[str, Any]) -> tuple[dict[str, Any], datetime | None]:
        """A requested trigger, built once: its full stored form (start dates resolved
        now) and its first fire time after now."""
        trigger, stored = resolve_trigger(spec, self.settings.zone)
        return stored, fire_time_after(trigger, None, datetime.now(UTC))

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
        trigger, first = self._resolve(spec["trigger"])
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
        return job.changed(next_run_time=first)

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
        first: datetime | None = None
        if changes.get("trigger") is not None:
            values["trigger"], first = self._resolve(changes["trigger"])
        updated = job.changed(**values)
        self._check_call(updated.func, updated.args, updated.kwargs)
        _check_options(updated)
        self._check_size(updated)
        paused = changes.get("paused", job.paused)
        if paused:
            updated = updated.changed(next_run_time=None)
        elif "trigger" in values:
            updated = updated.changed(next_run_time=first, note=None)
        elif job.paused:
            updated = updated.changed(next_run_time=self._first_time(job.trigger), note=None)
        if updated == job:
            return job
        return updated.changed(version=job.version + 1)


def _same_trigger(stored: JobDef, declared: JobDef) -> bool:
    """Whether the code declares the trigger it declared when ``stored`` was written."""
    if stored.damaged is not None or stored.declared is None or declared.declared is None:
        return False
    return bool(stored.declared.get("trigger") == declared.declared.get("trigger"))


def _page_errors(limit: int, offset: int) -> list[dict[str, str]]:
    """What is wrong with a page of ``limit`` (1-1000) items from ``offset`` (>= 0)."""
    errors = []
    if not 1 <= limit <= MAX_PAGE:
        errors.append({"field": "limit", "message": f"must be between 1 and {MAX_PAGE}"})
    if offset < 0:
        errors.append({"field": "offset", "message": "must be >= 0"})
    return errors


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
