"""A run: one claimed scheduled time of a job, as a run or a missed record.

:class:`Run` is what a row of ``asyncapp_runs`` holds; it is written by
claims, carried by the engine while the job runs, and ended by the recorder.
"""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from typing import Any

from asyncapp.constants import MAX_ERROR_MESSAGE, RUNNING, RunStatus
from asyncapp.model.values import storable


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True, kw_only=True)
class Run:
    """One row of the ledger; datetimes are aware UTC."""

    job_id: str
    scheduled_for: datetime
    node: str
    id: str = field(default_factory=new_id)
    status: RunStatus = RUNNING
    started_at: datetime | None = None
    ended_at: datetime | None = None
    error_type: str | None = None
    error_message: str | None = None
    attempt: int = 1
    process_id: str | None = None
    reason: str | None = None
    missed_until: datetime | None = None

    @property
    def key(self) -> str:
        """The idempotency key of this scheduled time: the same across retries and processes."""
        return f"{self.job_id}@{self.scheduled_for.isoformat()}"

    def evolve(self, **changes: Any) -> Run:
        """A copy with ``changes``: ``dataclasses.replace`` without its checks, which cost
        20 us a call on the path of every run."""
        new = object.__new__(Run)
        new.__dict__.update(self.__dict__, **changes)
        return new

    def finish(self, status: RunStatus, error: BaseException | None = None) -> Run:
        """This run, ended now with ``status`` (and the error's type and message)."""
        return self.evolve(
            status=status,
            ended_at=utcnow(),
            error_type=None if error is None else qualified_name(error),
            error_message=None if error is None else storable(str(error), MAX_ERROR_MESSAGE),
        )

    def row(self) -> dict[str, Any]:
        """Its columns (shallow: ``asdict`` deep-copies every datetime, 40x slower)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: datetimes as ISO 8601."""
        return {
            key: value.isoformat() if isinstance(value, datetime) else value
            for key, value in asdict(self).items()
        }


def qualified_name(error: BaseException) -> str:
    """``module.Class`` of an error, as users import it: ``httpx.ConnectError``, not
    ``httpx._exceptions.ConnectError``; builtins bare (``ValueError``)."""
    cls = type(error)
    if cls.__module__ == "builtins":
        return storable(cls.__qualname__, 200) or ""
    public = []
    for part in cls.__module__.split("."):
        if part.startswith("_"):
            break
        public.append(part)
    return storable(".".join([*public, cls.__qualname__]), 200) or ""
