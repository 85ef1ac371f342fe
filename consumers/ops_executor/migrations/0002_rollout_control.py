"""ops_executor: rolling batches, operators' go-aheads and aborts, outcome and not-run targets

Revision ID: ops_executor_0002
Revises: ops_executor_0001
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "ops_executor_0002"
down_revision = "ops_executor_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable or with a server default, so rows of updates recorded before this revision stay valid.
    op.add_column("executor_updates", sa.Column("outcome", sa.String(16), nullable=True))
    op.add_column("executor_updates", sa.Column("not_run", sa.Text(), nullable=False, server_default="[]"))
    op.add_column("executor_updates", sa.Column("waiting_batch", sa.Integer(), nullable=True))
    op.add_column("executor_updates", sa.Column("emitted", sa.Integer(), nullable=False, server_default="0"))
    op.create_table(
        "executor_batches",
        sa.Column("update_id", sa.String(64),
                  sa.ForeignKey("executor_updates.update_id", ondelete="CASCADE"), primary_key=True),
        sa.Column("batch", sa.Integer(), primary_key=True),
        sa.Column("ok_count", sa.Integer(), nullable=False),
        sa.Column("failed_count", sa.Integer(), nullable=False),
        sa.Column("next", sa.String(16), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "executor_confirms",
        sa.Column("update_id", sa.String(64),
                  sa.ForeignKey("executor_updates.update_id", ondelete="CASCADE"), primary_key=True),
        sa.Column("batch", sa.Integer(), primary_key=True),
        sa.Column("confirmed_by", sa.String(64), nullable=False),
        sa.Column("confirmed_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "executor_aborts",
        sa.Column("update_id", sa.String(64), primary_key=True),
        sa.Column("requested_by", sa.String(64), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("executor_aborts")
    op.drop_table("executor_confirms")
    op.drop_table("executor_batches")
    # SQLite drops columns by rebuilding the table; batch mode does that (and plain ALTER elsewhere).
    with op.batch_alter_table("executor_updates") as batch:
        batch.drop_column("emitted")
        batch.drop_column("waiting_batch")
        batch.drop_column("not_run")
        batch.drop_column("outcome")
