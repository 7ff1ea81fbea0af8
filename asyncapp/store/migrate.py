"""Schema migrations at startup, with Alembic, under a lock.

Every process runs :func:`migrate` when it opens the database, so N workers
starting together on a fresh (or an old) database must not race: the
upgrade runs under a PostgreSQL advisory lock, or on SQLite (one machine by
nature) under an exclusive lock on a file beside the database.  The process
that gets the lock first upgrades; the others then find the schema at head.

Databases made by asyncapp 0.1.0 have tables but no version table; they are
stamped with revision ``0001`` (that schema) before the upgrade.  Alembic's
version table is ``asyncapp_alembic_version``, so an application that runs
Alembic for its own tables in the same database keeps its own.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, column, inspect, select, table, text

if TYPE_CHECKING:
    from alembic.config import Config

log = logging.getLogger("asyncapp.db")

VERSION_TABLE = "asyncapp_alembic_version"
#: Any 64-bit number both processes agree on; this one spells "asyncapp".
ADVISORY_LOCK_KEY = 0x6173796E63617070 & 0x7FFFFFFFFFFFFFFF
INITIAL_REVISION = "0001"
#: The newest revision under ``migrations/versions`` (a test checks it against Alembic's
#: script directory).  Written here so that a process whose database is already at
#: head never imports Alembic: 0.1 s of startup and about 10 MB of memory.
HEAD_REVISION = "0004"
VERSION = table(VERSION_TABLE, column("version_num"))


def alembic_config() -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", "asyncapp.store:migrations")
    return config


def head_revision() -> str:
    """The newest revision, as Alembic's script directory says (imports Alembic)."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    """The schema revision of the database, or None if it has no version table."""
    with engine.connect() as conn:
        return _revision(conn)


def _revision(conn: Connection) -> str | None:
    if not inspect(conn).has_table(VERSION_TABLE):
        return None
    return conn.execute(select(VERSION.c.version_num)).scalar()


def migrate(engine: Engine) -> None:
    """Bring the database's schema to the latest revision (blocking; call off the loop)."""
    if current_revision(engine) == HEAD_REVISION:
        return
    from alembic import command

    head = head_revision()
    with _exclusive(engine):
        config = alembic_config()
        with engine.begin() as conn:
            config.attributes["connection"] = conn
            found = inspect(conn)
            if not found.has_table(VERSION_TABLE) and found.has_table("asyncapp_jobs"):
                log.info("database made by asyncapp 0.1.0: marking it as revision 0001")
                command.stamp(config, INITIAL_REVISION)
            before = _revision(conn)
            if before != head:
                log.info("migrating the database schema from %s to %s", before or "empty", head)
                command.upgrade(config, "head")


@contextlib.contextmanager
def _exclusive(engine: Engine) -> Iterator[None]:
    """Hold the migration lock of this database for the duration of the block."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": ADVISORY_LOCK_KEY})
            conn.commit()
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": ADVISORY_LOCK_KEY})
                conn.commit()
        return
    database = engine.url.database
    if not database or database == ":memory:":
        yield
        return
    with Path(f"{database}.migrate-lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
