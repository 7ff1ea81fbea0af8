"""The live processes as their heartbeat rows say."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Connection

from asyncapp.store.database import Database
from asyncapp.store.tables import processes_table


@dataclass(frozen=True)
class Process:
    """A live process as its heartbeat row says; times are epoch seconds (database clock)."""

    id: str
    node: str
    host: str
    pid: int
    role: str
    started_at: float
    heartbeat_at: float
    version: str
    info: dict[str, Any]

    def to_dict(self, now: float) -> dict[str, Any]:
        return {
            "id": self.id,
            "node": self.node,
            "host": self.host,
            "pid": self.pid,
            "role": self.role,
            "version": self.version,
            "started_at": self.started_at,
            "heartbeat_age": round(max(0.0, now - self.heartbeat_at), 3),
            **self.info,
        }


def registered(conn: Connection, db: Database, process_id: str) -> bool:
    """Whether ``process_id`` has its row, i.e. is not presumed dead.

    On PostgreSQL the row is share-locked (``FOR KEY SHARE``) until the
    transaction ends: a reaper's delete of it waits, so a claim or a reaping
    made by a live process commits before that process can be found dead.
    """
    query = select(processes_table.c.id).where(processes_table.c.id == process_id)
    if db.is_postgres:
        query = query.with_for_update(read=True, key_share=True)
    return conn.execute(query).first() is not None


def read_live(conn: Connection) -> list[Process]:
    rows = conn.execute(select(processes_table).order_by(processes_table.c.id))
    found = []
    for row in rows:
        try:
            info = json.loads(row.info)
        except ValueError:
            info = {}
        found.append(
            Process(
                id=row.id,
                node=row.node,
                host=row.host,
                pid=row.pid,
                role=row.role,
                started_at=row.started_at,
                heartbeat_at=row.heartbeat_at,
                version=row.version,
                info=info if isinstance(info, dict) else {},
            )
        )
    return found
