"""The tables, as the latest migration leaves them.

The migrations in ``asyncapp/migrations/versions`` create and change the
schema; these definitions are what the code queries, and a test checks that
they match what the migrations build.  Times that the database compares
(next run, heartbeats) are epoch seconds as floats; times people read (runs,
changes) are timestamps with time zone, always written in UTC.
"""

from __future__ import annotations

from sqlalchemy import (
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    text,
)

from asyncapp.constants import MAX_ID_LENGTH

metadata = MetaData()

#: One row per job: its definition as JSON plus what SQL needs to see.
jobs_table = Table(
    "asyncapp_jobs",
    metadata,
    Column("id", String(MAX_ID_LENGTH), primary_key=True),
    Column("func", String(400), nullable=False),
    # UTC epoch seconds of the next scheduled time; NULL means paused.  Advanced
    # by claims (never past a change: claims check ``version``).
    Column("next_run_time", Float, nullable=True, index=True),
    # JSON: name, args, kwargs, trigger spec, options, pause note, code declaration.
    Column("data", Text, nullable=False),
    # Bumped by every change of the definition or the paused state.
    Column("version", Integer, nullable=False, server_default="1"),
    Column("max_instances", Integer, nullable=False, server_default="1"),
    Column("updated_at", Float, nullable=False, server_default="0"),
)

#: One row per scheduled time of a job that was claimed: a run, or a missed record.
runs_table = Table(
    "asyncapp_runs",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("job_id", String(MAX_ID_LENGTH), nullable=False),
    Column("scheduled_for", DateTime(timezone=True), nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=True),
    Column("ended_at", DateTime(timezone=True), nullable=True),
    Column("status", String(16), nullable=False),
    Column("error_type", String(200), nullable=True),
    Column("error_message", Text, nullable=True),
    Column("node", String(200), nullable=False),
    Column("attempt", Integer, nullable=False, server_default="1"),
    # The process that claimed it (asyncapp_processes.id); NULL for missed records.
    Column("process_id", String(32), nullable=True),
    # Why a missed record did not run (asyncapp.constants.MISSED_REASONS).
    Column("reason", String(32), nullable=True),
    # A missed record standing for every scheduled time from scheduled_for to this.
    Column("missed_until", DateTime(timezone=True), nullable=True),
    # The exactly-once guarantee: one row per job and scheduled time.
    Index("uq_asyncapp_runs_job_time", "job_id", "scheduled_for", unique=True),
    Index("ix_asyncapp_runs_status", "status"),
    Index("ix_asyncapp_runs_scheduled", "scheduled_for"),
    # Runs in progress, by job: what every claim counts against max_instances.
    Index(
        "ix_asyncapp_runs_running",
        "job_id",
        sqlite_where=text("status = 'running'"),
        postgresql_where=text("status = 'running'"),
    ),
)

#: Earlier attempts of a run (retries, re-runs after an interruption).
attempts_table = Table(
    "asyncapp_attempts",
    metadata,
    Column("run_id", String(32), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=True),
    Column("ended_at", DateTime(timezone=True), nullable=True),
    Column("status", String(16), nullable=False),
    Column("error_type", String(200), nullable=True),
    Column("error_message", Text, nullable=True),
    Column("node", String(200), nullable=False),
    Column("process_id", String(32), nullable=True),
    PrimaryKeyConstraint("run_id", "attempt", name="pk_asyncapp_attempts"),
)

#: Live processes: each heartbeats its row; a row gone stale is a dead process.
processes_table = Table(
    "asyncapp_processes",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("node", String(200), nullable=False),
    Column("host", String(200), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("role", String(16), nullable=False),
    # Epoch seconds by the database's clock (PostgreSQL) so machines need not agree.
    Column("started_at", Float, nullable=False),
    Column("heartbeat_at", Float, nullable=False),
    Column("version", String(40), nullable=False),
    # JSON: scheduler state, runs in progress, loop lag; refreshed with the heartbeat.
    Column("info", Text, nullable=False, server_default="{}"),
)

#: Every change to a job or the scheduler, in commit order: history and change feed.
changes_table = Table(
    "asyncapp_changes",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", DateTime(timezone=True), nullable=False),
    # NULL for a change of the scheduler-wide state.
    Column("job_id", String(MAX_ID_LENGTH), nullable=True),
    Column("action", String(16), nullable=False),
    Column("source", String(16), nullable=False),
    Column("client", String(200), nullable=True),
    # JSON: what changed, e.g. {"paused": [false, true], "note": "upstream down"}.
    Column("detail", Text, nullable=False, server_default="{}"),
    Index("ix_asyncapp_changes_job", "job_id", "id"),
    # Pruning by age (ASYNCAPP_HISTORY_DAYS).
    Index("ix_asyncapp_changes_at", "at"),
)

#: One row (id 1): the scheduler-wide state every process follows.
scheduler_table = Table(
    "asyncapp_scheduler",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("state", String(16), nullable=False),
    Column("changed_at", Float, nullable=False),
)

#: The first answer to each request sent with an ``Idempotency-Key``: a retry gets it again.
requests_table = Table(
    "asyncapp_requests",
    metadata,
    # What was asked, e.g. "POST /scheduler/jobs": the same key may serve several routes.
    Column("scope", String(300), nullable=False),
    Column("key", String(255), nullable=False),
    # SHA-256 of the request's canonical body: a key reused for another request is refused.
    Column("fingerprint", String(64), nullable=False),
    Column("status", Integer, nullable=False),
    # The JSON answer given the first time.
    Column("body", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    PrimaryKeyConstraint("scope", "key", name="pk_asyncapp_requests"),
    Index("ix_asyncapp_requests_created", "created_at"),
)
