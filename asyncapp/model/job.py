"""A job as the database holds it: :class:`JobDef`, and its JSON forms.

A job's definition (function reference, trigger spec, arguments, options,
pause note, code declaration) is one JSON document in ``asyncapp_jobs.data``;
beside it the row has the columns SQL must see: ``next_run_time`` (NULL when
paused), ``version`` (bumped by every change) and ``max_instances``.  This
module converts between rows, :class:`JobDef` and the API's job JSON
(Flask-APScheduler's ``job_to_dict`` plus our fields); it does no I/O and
imports neither Flask nor APScheduler's scheduler.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, tzinfo
from typing import Any

from asyncapp.constants import ALLOW, SKIP, OverlapPolicy
from asyncapp.model.triggers import Spec, parse_zone, spec_fields
from asyncapp.model.values import from_epoch


@dataclass(frozen=True, kw_only=True)
class JobDef:
    """One job; ``next_run_time`` is aware UTC, None when paused."""

    id: str
    func: str
    trigger: Spec
    name: str | None = None
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    misfire_grace_time: int | None = None
    max_instances: int = 1
    coalesce: bool = True
    #: What to do when a run is due while another run of the job is in progress.
    overlap: OverlapPolicy = SKIP
    #: Seconds a run may take before it is cancelled and recorded as ``timeout``.
    timeout: float | None = None
    #: Further attempts after an attempt fails or times out.
    retries: int = 0
    #: Run again, as a new attempt, a run its process left behind when it died.
    rerun_interrupted: bool = False
    #: Why it is paused, as told by whoever paused it.
    note: str | None = None
    #: What ``@task(trigger, ...)`` declared, for jobs that the code owns.
    declared: dict[str, Any] | None = None
    next_run_time: datetime | None = None
    version: int = 0
    #: Why the stored row cannot be scheduled even if its function is registered.
    damaged: str | None = None

    @property
    def paused(self) -> bool:
        return self.next_run_time is None

    def data(self) -> str:
        """The JSON stored in ``asyncapp_jobs.data``.

        :raises ValueError: if args or kwargs are not JSON values.
        """
        return json.dumps(
            {
                "name": self.name,
                "args": self.args,
                "kwargs": self.kwargs,
                "trigger": self.trigger,
                "misfire_grace_time": self.misfire_grace_time,
                "max_instances": self.max_instances,
                "coalesce": self.coalesce,
                "overlap": self.overlap,
                "timeout": self.timeout,
                "retries": self.retries,
                "rerun_interrupted": self.rerun_interrupted,
                "note": self.note,
                "declared": self.declared,
            },
            sort_keys=True,
            separators=(",", ":"),
            allow_nan=False,
        )

    def columns(self) -> dict[str, Any]:
        """Every column of its row but ``id`` and ``updated_at``."""
        return {
            "func": self.func,
            "next_run_time": None if self.next_run_time is None else self.next_run_time.timestamp(),
            "data": self.data(),
            "version": self.version,
            "max_instances": self.max_instances,
        }

    @classmethod
    def from_row(cls, row: Any) -> JobDef:
        """The job a row of ``asyncapp_jobs`` describes.

        :raises ValueError: if its ``data`` is not the JSON we write.
        """
        data = json.loads(row.data)
        if not isinstance(data, dict) or not isinstance(data.get("trigger"), dict):
            raise ValueError("the job's data is not a JSON object with a trigger")
        return cls(
            id=row.id,
            func=row.func,
            trigger=data["trigger"],
            name=data.get("name"),
            args=list(data.get("args") or []),
            kwargs=dict(data.get("kwargs") or {}),
            misfire_grace_time=data.get("misfire_grace_time"),
            max_instances=row.max_instances,
            coalesce=bool(data.get("coalesce", True)),
            # Jobs from before overlap policies: several instances meant "allow".
            overlap=data.get("overlap") or (ALLOW if row.max_instances > 1 else SKIP),
            timeout=data.get("timeout"),
            retries=int(data.get("retries") or 0),
            rerun_interrupted=bool(data.get("rerun_interrupted", False)),
            note=data.get("note"),
            declared=data.get("declared"),
            next_run_time=from_epoch(row.next_run_time),
            version=row.version,
        )

    def changed(self, **changes: Any) -> JobDef:
        return replace(self, **changes)

    def local(self, moment: datetime) -> str:
        """``moment`` as ISO 8601 in the trigger's time zone, with that zone's true offset."""
        try:
            zone: tzinfo = parse_zone(self.trigger.get("timezone") or "UTC")
        except (ValueError, TypeError):
            zone = UTC
        return moment.astimezone(zone).isoformat()

    def to_api(self, *, broken: bool = False) -> dict[str, Any]:
        """Flask-APScheduler's job JSON, plus coalesce, jitter, timezone, paused, note, broken."""
        data: dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            "func": self.func,
            "args": list(self.args),
            "kwargs": dict(self.kwargs),
        }
        data.update(spec_fields(self.trigger))
        data.update(
            misfire_grace_time=self.misfire_grace_time,
            max_instances=self.max_instances,
            next_run_time=None if self.next_run_time is None else self.local(self.next_run_time),
            coalesce=self.coalesce,
            jitter=self.trigger.get("jitter"),
            overlap=self.overlap,
            timeout=self.timeout,
            retries=self.retries,
            rerun_interrupted=self.rerun_interrupted,
            paused=self.paused,
            note=self.note,
            version=self.version,
            broken=broken,
        )
        return data
