"""The database becomes the source of truth: versions, claims, processes, changes.

- jobs get ``version`` (bumped by every change; claims check it),
  ``max_instances`` (read by claims) and ``updated_at``;
- runs get a unique key per (job, scheduled time), the claiming process, the
  reason of a missed record and the end of a folded range of missed times.
  0.1.0 could run one time several times (one per worker): the extra rows of
  such a time are kept as earlier attempts of the run, not deleted.  Runs
  0.1.0 left ``running`` are ``interrupted``: no process of that version
  will end them;
- new tables: attempts, processes (heartbeats), changes (history and change
  feed), scheduler (the cluster-wide state); the revision counter goes.

Stop every 0.1.0 process before starting this version on its database.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import json
import time
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

LEFT_RUNNING = "left running by an earlier version of asyncapp"


def upgrade() -> None:
    conn = op.get_bind()
    op.add_column(
        "asyncapp_jobs", sa.Column("version", sa.Integer, nullable=False, server_default="1")
    )
    op.add_column(
        "asyncapp_jobs", sa.Column("max_instances", sa.Integer, nullable=False, server_default="1")
    )
    op.add_column(
        "asyncapp_jobs", sa.Column("updated_at", sa.Float, nullable=False, server_default="0")
    )
    jobs = sa.table("asyncapp_jobs", sa.column("id"), sa.column("data"), sa.column("max_instances"))
    for row in conn.execute(sa.select(jobs.c.id, jobs.c.data)).all():
        limit = _max_instances(row.data)
        if limit != 1:
            conn.execute(jobs.update().where(jobs.c.id == row.id).values(max_instances=limit))

    op.add_column("asyncapp_runs", sa.Column("process_id", sa.String(32), nullable=True))
    op.add_column("asyncapp_runs", sa.Column("reason", sa.String(32), nullable=True))
    op.add_column(
        "asyncapp_runs", sa.Column("missed_until", sa.DateTime(timezone=True), nullable=True)
    )
    op.create_table(
        "asyncapp_attempts",
        sa.Column("run_id", sa.String(32), nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error_type", sa.String(200), nullable=True),
        sa.Column("error_message", sa.Text, nullable=True),
        sa.Column("node", sa.String(200), nullable=False),
        sa.Column("process_id", sa.String(32), nullable=True),
        sa.PrimaryKeyConstraint("run_id", "attempt", name="pk_asyncapp_attempts"),
    )
    runs = sa.table(
        "asyncapp_runs",
        *(
            sa.column(name)
            for name in (
                "id", "job_id", "scheduled_for", "started_at", "ended_at", "status",
                "error_type", "error_message", "node", "attempt", "reason",
            )
        ),
    )  # fmt: skip
    conn.execute(
        runs.update()
        .where(runs.c.status == "running")
        .values(status="interrupted", error_message=LEFT_RUNNING)
    )
    conn.execute(runs.update().where(runs.c.status == "missed").values(reason="late"))
    _fold_duplicate_runs(conn, runs)
    op.drop_index("ix_asyncapp_runs_job_scheduled", table_name="asyncapp_runs")
    op.create_index(
        "uq_asyncapp_runs_job_time", "asyncapp_runs", ["job_id", "scheduled_for"], unique=True
    )
    op.create_index("ix_asyncapp_runs_scheduled", "asyncapp_runs", ["scheduled_for"])
    running = sa.text("status = 'running'")
    op.create_index(
        "ix_asyncapp_runs_running",
        "asyncapp_runs",
        ["job_id"],
        sqlite_where=running,
        postgresql_where=running,
    )

    op.create_table(
        "asyncapp_processes",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("node", sa.String(200), nullable=False),
        sa.Column("host", sa.String(200), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("started_at", sa.Float, nullable=False),
        sa.Column("heartbeat_at", sa.Float, nullable=False),
        sa.Column("version", sa.String(40), nullable=False),
        sa.Column("info", sa.Text, nullable=False, server_default="{}"),
    )
    op.create_table(
        "asyncapp_changes",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("job_id", sa.String(191), nullable=True),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("client", sa.String(200), nullable=True),
        sa.Column("detail", sa.Text, nullable=False, server_default="{}"),
    )
    op.create_index("ix_asyncapp_changes_job", "asyncapp_changes", ["job_id", "id"])
    scheduler = op.create_table(
        "asyncapp_scheduler",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("changed_at", sa.Float, nullable=False),
    )
    op.bulk_insert(scheduler, [{"id": 1, "state": "running", "changed_at": time.time()}])
    op.drop_table("asyncapp_meta")


def downgrade() -> None:
    op.create_table(
        "asyncapp_meta",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.Integer, nullable=False),
    )
    op.bulk_insert(
        sa.table("asyncapp_meta", sa.column("key"), sa.column("value")),
        [{"key": "jobs_revision", "value": 0}],
    )
    op.drop_table("asyncapp_scheduler")
    op.drop_index("ix_asyncapp_changes_job", table_name="asyncapp_changes")
    op.drop_table("asyncapp_changes")
    op.drop_table("asyncapp_processes")
    op.drop_table("asyncapp_attempts")
    op.drop_index("ix_asyncapp_runs_running", table_name="asyncapp_runs")
    op.drop_index("ix_asyncapp_runs_scheduled", table_name="asyncapp_runs")
    op.drop_index("uq_asyncapp_runs_job_time", table_name="asyncapp_runs")
    op.create_index("ix_asyncapp_runs_job_scheduled", "asyncapp_runs", ["job_id", "scheduled_for"])
    with op.batch_alter_table("asyncapp_runs") as batch:
        batch.drop_column("missed_until")
        batch.drop_column("reason")
        batch.drop_column("process_id")
    with op.batch_alter_table("asyncapp_jobs") as batch:
        batch.drop_column("updated_at")
        batch.drop_column("max_instances")
        batch.drop_column("version")


def _max_instances(data: str) -> int:
    try:
        value = json.loads(data).get("max_instances")
    except (ValueError, AttributeError):
        return 1
    return value if isinstance(value, int) and value >= 1 else 1


def _fold_duplicate_runs(conn: Any, runs: Any) -> None:
    """Keep one row per (job, scheduled time); the others become its earlier attempts."""
    attempts = sa.table(
        "asyncapp_attempts",
        *(
            sa.column(name)
            for name in (
                "run_id", "attempt", "started_at", "ended_at", "status",
                "error_type", "error_message", "node", "process_id",
            )
        ),
    )  # fmt: skip
    groups = conn.execute(
        sa.select(runs.c.job_id, runs.c.scheduled_for)
        .group_by(runs.c.job_id, runs.c.scheduled_for)
        .having(sa.func.count() > 1)
    ).all()
    for job_id, scheduled_for in groups:
        rows = conn.execute(
            sa.select(runs)
            .where(runs.c.job_id == job_id, runs.c.scheduled_for == scheduled_for)
            .order_by(runs.c.started_at, runs.c.id)
        ).all()
        *earlier, kept = rows
        for number, row in enumerate(earlier, start=1):
            conn.execute(
                attempts.insert().values(
                    run_id=kept.id,
                    attempt=number,
                    started_at=row.started_at,
                    ended_at=row.ended_at,
                    status=row.status,
                    error_type=row.error_type,
                    error_message=row.error_message,
                    node=row.node,
                    process_id=None,
                )
            )
            conn.execute(runs.delete().where(runs.c.id == row.id))
        conn.execute(runs.update().where(runs.c.id == kept.id).values(attempt=len(earlier) + 1))
