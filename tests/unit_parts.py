"""What the unit tests of the engine's parts share: job functions in a registry of
their own, jobs built as the database would hold them, and the SQL store on a temp
SQLite file."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from asyncapp.model.job import JobDef
from asyncapp.model.tasks import Registry, reference
from asyncapp.store.sql import SqlStore

#: A time on the grid of :data:`EVERY_10S` (claim keys are exact trigger times).
EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
EVERY_10S = {"type": "interval", "seconds": 10, "start_date": EPOCH.isoformat()}


async def tick(*args: Any, **kwargs: Any) -> None:
    """A job body that does nothing."""


def sync_tick(*args: Any, **kwargs: Any) -> None:
    """A ``def`` job body that does nothing."""


async def greet(name: str) -> None:
    """A job body that takes exactly one argument."""


TICK = reference(tick)
SYNC_TICK = reference(sync_tick)
GREET = reference(greet)


def registry() -> Registry:
    """A registry of its own (not the process-wide one) holding :func:`tick`,
    :func:`sync_tick` and :func:`greet`."""
    tasks = Registry()
    tasks.add(tick, None)
    tasks.add(sync_tick, None)
    tasks.add(greet, None)
    return tasks


def job(job_id: str = "j", **fields: Any) -> JobDef:
    """A version-1 job of :func:`tick` every 10 s, due at ``EPOCH`` unless told."""
    fields.setdefault("func", TICK)
    fields.setdefault("trigger", dict(EVERY_10S))
    fields.setdefault("version", 1)
    fields.setdefault("next_run_time", EPOCH)
    return JobDef(id=job_id, **fields)


def on_grid(now: datetime) -> datetime:
    """The latest time of :data:`EVERY_10S` at or before ``now``."""
    return EPOCH + timedelta(seconds=(now - EPOCH).total_seconds() // 10 * 10)


@asynccontextmanager
async def sqlite_store(path: Path) -> AsyncIterator[SqlStore]:
    """An opened (migrated) store on the SQLite file ``path``; closed after."""
    store = SqlStore.at(f"sqlite:///{path}")
    await store.open()
    try:
        yield store
    finally:
        await store.close()


async def insert(store: SqlStore, *jobs: JobDef) -> None:
    """Store ``jobs`` as committed rows, exactly as given (their versions kept: the
    store's ``add_job`` would give each its change's id)."""

    def write(conn: Any) -> None:
        for one in jobs:
            store.rows.insert(conn, one, 0.0)

    await store.db.write(write)
