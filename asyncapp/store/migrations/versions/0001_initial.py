"""The schema of asyncapp 0.1.0: jobs, runs and a revision counter.

Databases created by 0.1.0 have these tables but no version table;
:mod:`asyncapp.store.migrate` stamps them with this revision before upgrading.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "asyncapp_jobs",
        sa.Column("id", sa.String(191), primary_key=True),
        sa.Column("func", sa.String(400), nullable=False),
        sa.Column("next_run_time", sa.Float, nullable=True),
        sa.Column("data", sa.Text, nullable=False),
    )
    op.create_index("ix_asyncapp_jobs_next_run_time", "asyncapp_jobs", ["next_run_time"])
    op.create_table(
        "asyncapp_runs",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("job_id", sa.String(191), nullable=False),
        sa.Column("scheduled_for", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error_type", sa.String(200), nullable=True),
        sa.Column("error_message", sa.Text, nullable=True),
        sa.Column("node", sa.String(200), nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
    )
    op.create_index("ix_asyncapp_runs_job_scheduled", "asyncapp_runs", ["job_id", "scheduled_for"])
    op.create_index("ix_asyncapp_runs_status", "asyncapp_runs", ["status"])
    op.create_table(
        "asyncapp_meta",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.Integer, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("asyncapp_meta")
    op.drop_table("asyncapp_runs")
    op.drop_table("asyncapp_jobs")
