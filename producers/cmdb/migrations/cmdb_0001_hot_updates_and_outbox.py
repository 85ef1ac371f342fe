"""cmdb: hot updates, target results, outbox

Revision ID: cmdb_0001
Revises:
Create Date: 2026-11-24
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from alembic import op

revision = "cmdb_0001"
down_revision = None
branch_labels = ("cmdb",)
depends_on = None


def _ts(name: str, nullable: bool = True) -> sa.Column[datetime]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "cmdb_hot_updates",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("parent_id", sa.String(36), sa.ForeignKey("cmdb_hot_updates.id"), nullable=True),
        sa.Column("project", sa.String(64), nullable=False),
        sa.Column("area_name", sa.String(64), nullable=False),
        sa.Column("area_code", sa.String(64), nullable=False),
        sa.Column("update_type", sa.String(16), nullable=False),
        sa.Column("client_type", sa.Integer, nullable=True),
        sa.Column("version", sa.String(32), nullable=False),
        sa.Column("requested_by", sa.String(64), nullable=False),
        sa.Column("push_requested_by", sa.String(64), nullable=True),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("final_data", sa.Text, nullable=True),
        sa.Column("erlang_cmd_list", sa.JSON, nullable=False),
        sa.Column("backup_dir", sa.Text, nullable=True),
        sa.Column("files", sa.JSON, nullable=True),
        sa.Column("chosen_files", sa.JSON, nullable=True),
        sa.Column("rsync_targets", sa.JSON, nullable=True),
        sa.Column("ops_manager", sa.String(64), nullable=True),
        sa.Column("update_targets", sa.JSON, nullable=True),
        sa.Column("narrowed", sa.Boolean, nullable=False),
        sa.Column("last_sequence", sa.Integer, nullable=False),
        sa.Column("pull_event_id", sa.String(128), nullable=True),
        sa.Column("pulled_event_id", sa.String(128), nullable=True),
        sa.Column("push_event_id", sa.String(128), nullable=True),
        sa.Column("update_event_id", sa.String(128), nullable=True),
        _ts("created_at", nullable=False),
        _ts("updated_at", nullable=False),
        _ts("pulled_at"),
        _ts("push_requested_at"),
        _ts("pushed_at"),
        _ts("update_requested_at"),
        _ts("started_at"),
        _ts("finished_at"),
    )
    op.create_index("ix_cmdb_hot_updates_parent_id", "cmdb_hot_updates", ["parent_id"])
    op.create_index("ix_cmdb_hot_updates_state", "cmdb_hot_updates", ["state"])

    op.create_table(
        "cmdb_target_results",
        sa.Column("update_id", sa.String(36), sa.ForeignKey("cmdb_hot_updates.id"), primary_key=True),
        sa.Column("kind", sa.String(16), primary_key=True),
        sa.Column("target", sa.String(255), primary_key=True),
        sa.Column("ok", sa.Boolean, nullable=False),
        sa.Column("detail", sa.JSON, nullable=False),
        sa.Column("event_id", sa.String(128), nullable=False),
        _ts("reported_at", nullable=False),
    )

    op.create_table(
        "cmdb_outbox",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("event_id", sa.String(128), nullable=False, unique=True),
        sa.Column("update_id", sa.String(64), nullable=False),
        sa.Column("event_type", sa.String(128), nullable=False),
        sa.Column("routing_key", sa.String(255), nullable=False),
        sa.Column("envelope", sa.LargeBinary, nullable=False),
        _ts("created_at", nullable=False),
        _ts("published_at"),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("last_error", sa.Text, nullable=True),
    )
    op.create_index("ix_cmdb_outbox_update_id", "cmdb_outbox", ["update_id"])
    op.create_index("ix_cmdb_outbox_unpublished", "cmdb_outbox", ["published_at", "id"])


def downgrade() -> None:
    op.drop_table("cmdb_outbox")
    op.drop_table("cmdb_target_results")
    op.drop_index("ix_cmdb_hot_updates_state", "cmdb_hot_updates")
    op.drop_index("ix_cmdb_hot_updates_parent_id", "cmdb_hot_updates")
    op.drop_table("cmdb_hot_updates")
