"""Who changes a job, and a change as the history records it."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from asyncapp.constants import ChangeSource


@dataclass(frozen=True)
class Actor:
    """Who asks for a change: the face it came through and, for HTTP, the client address."""

    source: ChangeSource
    client: str | None = None


@dataclass(frozen=True)
class Change:
    """One recorded change, as ``GET /scheduler/jobs/<id>/changes`` shows it."""

    id: int
    at: datetime
    job_id: str | None
    action: str
    source: str
    client: str | None
    detail: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "at": self.at.isoformat(),
            "job_id": self.job_id,
            "action": self.action,
            "source": self.source,
            "client": self.client,
            "detail": self.detail,
        }
