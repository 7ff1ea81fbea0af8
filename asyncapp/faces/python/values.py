"""What the Python API returns: :class:`Job` and :class:`JobRun`, values made from the
HTTP API's JSON, and the conversions of Python values to that JSON."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from asyncapp.model.tasks import reference
from asyncapp.service.schemas import ALL_TRIGGER_FIELDS


@dataclass(frozen=True)
class Job:
    """A job as stored, the HTTP API's job JSON as a value.

    ``trigger`` is ``{"type": "interval", "minutes": 5, ...}``, the fields set;
    ``next_run_time`` is aware (the trigger's time zone), None when paused or over.
    """

    id: str
    name: str
    func: str
    trigger: dict[str, Any]
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    next_run_time: datetime | None = None
    paused: bool = False
    note: str | None = None
    broken: bool = False
    misfire_grace_time: int | None = None
    max_instances: int = 1
    coalesce: bool = True
    overlap: str = "skip"
    timeout: float | None = None
    retries: int = 0
    version: int = 1

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> Job:
        trigger = {"type": data["trigger"]}
        trigger.update(
            (key, value)
            for key, value in data.items()
            if key in ALL_TRIGGER_FIELDS and value is not None
        )
        when = data.get("next_run_time")
        return cls(
            id=data["id"],
            name=data["name"],
            func=data["func"],
            trigger=trigger,
            args=tuple(data.get("args") or ()),
            kwargs=dict(data.get("kwargs") or {}),
            next_run_time=None if when is None else datetime.fromisoformat(when),
            paused=bool(data.get("paused")),
            note=data.get("note"),
            broken=bool(data.get("broken")),
            misfire_grace_time=data.get("misfire_grace_time"),
            max_instances=data.get("max_instances", 1),
            coalesce=data.get("coalesce", True),
            overlap=data.get("overlap", "skip"),
            timeout=data.get("timeout"),
            retries=data.get("retries", 0),
            version=data.get("version", 1),
        )


@dataclass(frozen=True)
class JobRun:
    """One run of a job, or the record of a scheduled time that was not run (``missed``).

    Times are aware UTC; ``status`` is one of ``asyncapp.constants.RUN_STATUSES``.
    """

    id: str
    job_id: str
    status: str
    scheduled_for: datetime
    node: str
    started_at: datetime | None = None
    ended_at: datetime | None = None
    error_type: str | None = None
    error_message: str | None = None
    attempt: int = 1
    reason: str | None = None

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> JobRun:
        def moment(name: str) -> datetime | None:
            value = data.get(name)
            return None if value is None else datetime.fromisoformat(value)

        scheduled = moment("scheduled_for")
        assert scheduled is not None
        return cls(
            id=data["id"],
            job_id=data["job_id"],
            status=data["status"],
            scheduled_for=scheduled,
            node=data["node"],
            started_at=moment("started_at"),
            ended_at=moment("ended_at"),
            error_type=data.get("error_type"),
            error_message=data.get("error_message"),
            attempt=data.get("attempt", 1),
            reason=data.get("reason"),
        )


def as_json(value: Any) -> Any:
    """Python values as the API's JSON takes them: tuples as lists, dates as ISO 8601."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, tuple | list):
        return [as_json(item) for item in value]
    if isinstance(value, Mapping):
        return {key: as_json(item) for key, item in value.items()}
    return value


def func_ref(func: Callable[..., Any] | str) -> str:
    """``"module:name"`` of a job function given as the function or its reference."""
    return func if isinstance(func, str) else reference(func)
