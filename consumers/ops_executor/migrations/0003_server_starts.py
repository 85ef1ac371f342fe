"""ops_executor: a server's start is recorded before anything runs on it

Revision ID: ops_executor_0003
Revises: ops_executor_0002
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "ops_executor_0003"
down_revision = "ops_executor_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "executor_server_starts",
        sa.Column("update_id", sa.String(64),
                  sa.ForeignKey("executor_updates.update_id", ondelete="CASCADE"), primary_key=True),
        sa.Column("group", sa.String(16), primary_key=True),
        sa.Column("ip", sa.String(64), primary_key=True),
        sa.Column("server", sa.String(128), primary_key=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("executor_server_starts")
