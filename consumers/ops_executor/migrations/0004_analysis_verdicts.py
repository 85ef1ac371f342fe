"""ops_executor: analysis verdicts on batches (issue 17)

Revision ID: ops_executor_0004
Revises: ops_executor_0003
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "ops_executor_0004"
down_revision = "ops_executor_0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "executor_verdicts",
        sa.Column("update_id", sa.String(64),
                  sa.ForeignKey("executor_updates.update_id", ondelete="CASCADE"), primary_key=True),
        sa.Column("batch", sa.Integer, primary_key=True),
        sa.Column("verdict", sa.String(8), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("link", sa.Text, nullable=False),
        sa.Column("analysed_by", sa.String(64), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("executor_verdicts")
