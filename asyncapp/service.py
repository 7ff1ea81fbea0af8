"""Job use cases shared by the API, the CLI and the dashboard; no Flask here.

Every method validates before it changes anything, raises only
:mod:`asyncapp.errors` exceptions for bad input, and returns JSON-ready dicts.
Writes are flushed before a method returns, so a success means the change is
in the database.  Methods must be called on the loop the runtime runs on.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from apscheduler.job import Job
from apscheduler.jobstores.base import ConflictingIdError, JobLookupError

from .errors import InvalidJob, JobExists, JobNotFound
from .ledger import STATUSES
from .runtime import Runtime
from .store import Row
from .triggers import build_trigger, spec_fields, trigger_fields

JOB_OPTIONS = ("name", "misfire_grace_time", "max_instances", "coalesce")
CHANGEABLE = ("func", "args", "kwargs", "trigger", "paused", *JOB_OPTIONS)


class JobService:
    """Operations on the jobs and runs of one started :class:`Runtime`."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    # -- scheduler ------------------------------------------------------------

    def scheduler_info(self) -> dict[str, Any]:
        scheduler = self.runtime.scheduler
        return {
            "current_host": self.runtime.settings.node_name,
            "allowed_hosts": ["*"],
            "running": scheduler.state_name == "running",
            "state": scheduler.state_name,
            "jobs": len(scheduler.get_jobs()),
            "broken_jobs": len(self.runtime.store.broken),
            "runs_in_progress": self.runtime.executor.running,
        }

    def pause_scheduler(self) -> None:
        """Stop firing until resumed (state ``paused``); running jobs go on."""
        self.runtime.scheduler.halt(False)

    def resume_scheduler(self) -> None:
        if self.runtime.fire:
            self.runtime.scheduler.resume()

    def start_scheduler(self) -> None:
        """Undo :meth:`shutdown_scheduler`."""
        self.resume_scheduler()

    def shutdown_scheduler(self) -> None:
        """Stop firing (state ``stopped``) until started again; running jobs go on.

        The scheduler object itself stays up so jobs can still be listed and
        changed; the process shuts it down for real in lifespan shutdown.
        """
        self.runtime.scheduler.halt(True)

    def functions(self) -> list[str]:
        """References of the registered ``@task`` functions."""
        return self.runtime.tasks.refs()

    # -- jobs -----------------------------------------------------------------

    def list_jobs(self) -> list[dict[str, Any]]:
        jobs = [job_to_dict(job) for job in self.runtime.scheduler.get_jobs()]
        jobs.extend(broken_to_dict(row) for row in self.runtime.store.broken.values())
        return jobs

    def get_job(self, job_id: str) -> dict[str, Any]:
        job = self.runtime.scheduler.get_job(job_id)
        if job is not None:
            return job_to_dict(job)
        row = self.runtime.store.broken.get(job_id)
        if row is not None:
            return broken_to_dict(row)
        raise JobNotFound(job_id)

    async def add_job(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Schedule a new job from a spec (see ``docs/api.md``).

        :raises UnknownFunction, InvalidJob, JobExists:
        """
        task = self.runtime.tasks.resolve(spec["func"])
        trigger = build_trigger(spec["trigger"], self.runtime.settings.zone)
        job_id = spec.get("id") or uuid.uuid4().hex
        if self.runtime.scheduler.get_job(job_id) or job_id in self.runtime.store.broken:
            raise JobExists(job_id)
        options = {key: spec[key] for key in JOB_OPTIONS if spec.get(key) is not None}
        if spec.get("paused"):
            options["next_run_time"] = None
        try:
            job = self.runtime.scheduler.add_job(
                task.func,
                trigger,
                id=job_id,
                args=list(spec.get("args") or []),
                kwargs=dict(spec.get("kwargs") or {}),
                **options,
            )
        except ConflictingIdError:
            raise JobExists(job_id) from None
        except (TypeError, ValueError) as exc:
            raise _invalid(exc) from None
        await self.runtime.writer.flush()
        return job_to_dict(job)

    async def update_job(self, job_id: str, changes: dict[str, Any]) -> dict[str, Any]:
        """Change a job; ``trigger`` replaces the whole trigger and recomputes the next run.

        :raises JobNotFound, UnknownFunction, InvalidJob:
        """
        unknown = sorted(set(changes) - set(CHANGEABLE))
        if unknown:
            raise InvalidJob([{"field": key, "message": "cannot be changed"} for key in unknown])
        job = self._job(job_id)
        modify: dict[str, Any] = {k: changes[k] for k in JOB_OPTIONS if changes.get(k) is not None}
        for key in ("args", "kwargs"):
            if key in changes:
                modify[key] = (
                    changes[key] if changes[key] is not None else ([], {})[key == "kwargs"]
                )
        if "func" in changes:
            modify["func"] = self.runtime.tasks.resolve(changes["func"]).func
        trigger = (
            build_trigger(changes["trigger"], self.runtime.settings.zone)
            if changes.get("trigger") is not None
            else None
        )
        paused = changes.get("paused", job.next_run_time is None)
        scheduler = self.runtime.scheduler
        try:
            # Validate every change on a scratch copy before touching the real job.
            scratch = Job.__new__(Job)
            for slot in Job.__slots__:
                if slot != "__weakref__" and hasattr(job, slot):
                    setattr(scratch, slot, getattr(job, slot))
            scratch._modify(**modify)
            self.runtime.store.row(scratch)
        except (TypeError, ValueError) as exc:
            raise _invalid(exc) from None
        if modify:
            scheduler.modify_job(job_id, **modify)
        if trigger is not None:
            scheduler.reschedule_job(job_id, trigger=trigger)
        if paused:
            scheduler.pause_job(job_id)
        elif job.next_run_time is None or trigger is not None:
            scheduler.resume_job(job_id)
        await self.runtime.writer.flush()
        return self.get_job(job_id)

    async def delete_job(self, job_id: str) -> None:
        """Remove a job, broken or not. :raises JobNotFound:"""
        try:
            self.runtime.scheduler.remove_job(job_id)
        except JobLookupError:
            try:
                self.runtime.store.remove_broken(job_id)
            except JobLookupError:
                raise JobNotFound(job_id) from None
        await self.runtime.writer.flush()

    async def pause_job(self, job_id: str) -> dict[str, Any]:
        self._job(job_id)
        self.runtime.scheduler.pause_job(job_id)
        await self.runtime.writer.flush()
        return self.get_job(job_id)

    async def resume_job(self, job_id: str) -> dict[str, Any]:
        self._job(job_id)
        self.runtime.scheduler.resume_job(job_id)
        await self.runtime.writer.flush()
        return self.get_job(job_id)

    async def run_job(self, job_id: str) -> dict[str, Any]:
        """Fire a job now on the loop, outside its schedule; returns the started run.

        Does not wait for the job to finish.  :raises JobNotFound, JobBusy:
        """
        run = self.runtime.executor.run_now(self._job(job_id))
        return run.to_dict()

    # -- runs -----------------------------------------------------------------

    async def list_runs(
        self,
        job_id: str | None = None,
        status: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> dict[str, Any]:
        """Runs, newest first. :raises InvalidJob: for a bad status, limit or offset."""
        errors = []
        if status is not None and status not in STATUSES:
            errors.append({"field": "status", "message": f"must be one of {', '.join(STATUSES)}"})
        if not 1 <= limit <= 1000:
            errors.append({"field": "limit", "message": "must be between 1 and 1000"})
        if offset < 0:
            errors.append({"field": "offset", "message": "must be >= 0"})
        if errors:
            raise InvalidJob(errors)
        runs, total = await self.runtime.ledger.list(
            job_id=job_id, status=status, limit=limit, offset=offset
        )
        return {
            "runs": [run.to_dict() for run in runs],
            "total": total,
            "limit": limit,
            "offset": offset,
        }

    def _job(self, job_id: str) -> Job:
        job = self.runtime.scheduler.get_job(job_id)
        if job is not None:
            return job
        if job_id in self.runtime.store.broken:
            raise InvalidJob(
                [{"field": "func", "message": "this job's function is not registered any more"}]
            )
        raise JobNotFound(job_id)


def job_to_dict(job: Job) -> dict[str, Any]:
    """Flask-APScheduler's job JSON, plus coalesce, jitter, timezone, paused, broken."""
    data: dict[str, Any] = {
        "id": job.id,
        "name": job.name,
        "func": job.func_ref,
        "args": list(job.args),
        "kwargs": dict(job.kwargs),
    }
    data.update(trigger_fields(job.trigger))
    data.update(
        misfire_grace_time=job.misfire_grace_time,
        max_instances=job.max_instances,
        next_run_time=_iso(job.next_run_time),
        coalesce=job.coalesce,
        jitter=getattr(job.trigger, "jitter", None),
        paused=job.next_run_time is None,
        broken=False,
    )
    return data


def broken_to_dict(row: Row) -> dict[str, Any]:
    """The job JSON of a stored job whose function is not registered."""
    fields = row.fields
    trigger = fields.get("trigger", {})
    data: dict[str, Any] = {
        "id": row.id,
        "name": fields.get("name"),
        "func": row.func,
        "args": fields.get("args", []),
        "kwargs": fields.get("kwargs", {}),
    }
    data.update(spec_fields(trigger))
    data.update(
        misfire_grace_time=fields.get("misfire_grace_time"),
        max_instances=fields.get("max_instances"),
        next_run_time=None
        if row.next_run_time is None
        else _iso(datetime.fromtimestamp(row.next_run_time, UTC)),
        coalesce=fields.get("coalesce"),
        jitter=trigger.get("jitter"),
        paused=row.next_run_time is None,
        broken=True,
    )
    return data


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _invalid(exc: Exception) -> InvalidJob:
    if isinstance(exc, InvalidJob):
        return exc
    # APScheduler's messages here are about the caller's values (argument names,
    # option types), never internal state, so they are safe to show.
    return InvalidJob([{"field": "job", "message": str(exc)}])
