"""Requests sent with an ``Idempotency-Key`` keep their first answer.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "asyncapp_requests",
        sa.Column("scope", sa.String(300), nullable=False),
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("status", sa.Integer, nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("scope", "key", name="pk_asyncapp_requests"),
    )
    op.create_index("ix_asyncapp_requests_created", "asyncapp_requests", ["created_at"])


def downgrade() -> None:
    op.drop_table("asyncapp_requests")
