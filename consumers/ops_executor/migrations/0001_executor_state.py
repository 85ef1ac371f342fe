"""ops_executor: updates and per-target results

Revision ID: ops_executor_0001
Revises:
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "ops_executor_0001"
down_revision = None
branch_labels = ("ops_executor",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "executor_updates",
        sa.Column("update_id", sa.String(64), primary_key=True),
        sa.Column("project", sa.String(64), nullable=False),
        sa.Column("area", sa.String(64), nullable=False),
        sa.Column("update_type", sa.String(16), nullable=False),
        sa.Column("version", sa.String(32), nullable=False),
        sa.Column("request", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("refused", sa.Boolean(), nullable=False),
        sa.Column("final_result", sa.Boolean(), nullable=True),
        sa.Column("final_data", sa.Text(), nullable=False),
        sa.Column("ok_count", sa.Integer(), nullable=False),
        sa.Column("failed_count", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_executor_updates_status", "executor_updates", ["status"])
    op.create_table(
        "executor_server_results",
        sa.Column("update_id", sa.String(64),
                  sa.ForeignKey("executor_updates.update_id", ondelete="CASCADE"), primary_key=True),
        sa.Column("group", sa.String(16), primary_key=True),
        sa.Column("ip", sa.String(64), primary_key=True),
        sa.Column("server", sa.String(128), primary_key=True),
        sa.Column("update_status", sa.Boolean(), nullable=False),
        sa.Column("update_data", sa.Text(), nullable=False),
        sa.Column("erl_status", sa.Boolean(), nullable=False),
        sa.Column("erl_data", sa.Text(), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "executor_cdn_results",
        sa.Column("update_id", sa.String(64),
                  sa.ForeignKey("executor_updates.update_id", ondelete="CASCADE"), primary_key=True),
        sa.Column("cdn_root_url", sa.String(255), primary_key=True),
        sa.Column("cdn_dir", sa.String(128), primary_key=True),
        sa.Column("status", sa.Boolean(), nullable=False),
        sa.Column("data", sa.Text(), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("executor_cdn_results")
    op.drop_table("executor_server_results")
    op.drop_index("ix_executor_updates_status", table_name="executor_updates")
    op.drop_table("executor_updates")
