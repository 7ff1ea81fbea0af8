"""Change history is pruned by age: an index on ``asyncapp_changes.at``.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_asyncapp_changes_at", "asyncapp_changes", ["at"])


def downgrade() -> None:
    op.drop_index("ix_asyncapp_changes_at", table_name="asyncapp_changes")
