"""projection: event log with hash chain, head, applied, rejected, status view

Revision ID: projection_0001
Revises:
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "projection_0001"
down_revision = None
branch_labels = ("projection",)
depends_on = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "projection_event_log",
        sa.Column("position", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("event_id", sa.String(128), nullable=False),
        sa.Column("type", sa.String(128), nullable=False),
        sa.Column("updateid", sa.String(64), nullable=False),
        sa.Column("project", sa.String(64), nullable=False),
        sa.Column("area", sa.String(64), nullable=False),
        sa.Column("source", sa.String(256), nullable=False),
        sa.Column("sequence", sa.BigInteger(), nullable=False),
        sa.Column("event_time", _TS, nullable=False),
        sa.Column("received_at", _TS, nullable=False),
        sa.Column("envelope", sa.Text(), nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.UniqueConstraint("event_id", name="uq_projection_event_log_event_id"),
        sa.UniqueConstraint("hash", name="uq_projection_event_log_hash"),
    )
    op.create_index("ix_projection_event_log_type", "projection_event_log", ["type"])
    op.create_index("ix_projection_event_log_received_at", "projection_event_log", ["received_at"])
    op.create_index("ix_projection_event_log_updateid_position", "projection_event_log", ["updateid", "position"])
    op.create_index("ix_projection_event_log_project_area", "projection_event_log", ["project", "area"])

    head = op.create_table(
        "projection_head",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("position", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
    )
    op.bulk_insert(head, [{"id": 1, "position": 0, "hash": "0" * 64, "version": 0}])

    op.create_table(
        "projection_applied",
        sa.Column("event_id", sa.String(128), primary_key=True),
        sa.Column("position", sa.BigInteger(), nullable=False),
        sa.Column("updateid", sa.String(64), nullable=False),
    )
    op.create_index("ix_projection_applied_updateid", "projection_applied", ["updateid"])

    op.create_table(
        "projection_rejected",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("dedupe_key", sa.String(64), nullable=False),
        sa.Column("service", sa.String(128), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("routing_key", sa.String(256), nullable=False),
        sa.Column("message_id", sa.String(256)),
        sa.Column("event_id", sa.String(128)),
        sa.Column("event_type", sa.String(128)),
        sa.Column("updateid", sa.String(64)),
        sa.Column("project", sa.String(64)),
        sa.Column("area", sa.String(64)),
        sa.Column("source", sa.String(256)),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("body_bytes", sa.Integer(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("first_parked_at", _TS, nullable=False),
        sa.Column("last_parked_at", _TS, nullable=False),
        sa.Column("times", sa.Integer(), nullable=False),
        sa.UniqueConstraint("dedupe_key", name="uq_projection_rejected_dedupe_key"),
    )
    op.create_index("ix_projection_rejected_event_id", "projection_rejected", ["event_id"])
    op.create_index("ix_projection_rejected_updateid", "projection_rejected", ["updateid"])
    op.create_index("ix_projection_rejected_first_parked_at", "projection_rejected", ["first_parked_at"])

    op.create_table(
        "projection_updates",
        sa.Column("updateid", sa.String(64), primary_key=True),
        sa.Column("project", sa.String(64), nullable=False),
        sa.Column("area", sa.String(64), nullable=False),
        sa.Column("update_type", sa.String(16)),
        sa.Column("version", sa.String(32)),
        sa.Column("area_name", sa.String(64)),
        sa.Column("client_type", sa.Integer()),
        sa.Column("ops_manager", sa.String(64)),
        sa.Column("erlang_cmd_list", sa.JSON()),
        sa.Column("rollout", sa.JSON()),
        sa.Column("parent_updateid", sa.String(64)),
        sa.Column("relation", sa.String(16)),
        sa.Column("requested_by", sa.String(64)),
        sa.Column("pull_requested_by", sa.String(64)),
        sa.Column("push_requested_by", sa.String(64)),
        sa.Column("update_requested_by", sa.String(64)),
        sa.Column("pull_requested_source", sa.String(256)),
        sa.Column("update_requested_source", sa.String(256)),
        sa.Column("stage", sa.String(32), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("final_result", sa.Boolean()),
        sa.Column("final_data", sa.Text()),
        sa.Column("outcome", sa.String(16)),
        sa.Column("not_run", sa.JSON()),
        sa.Column("completed_ok_count", sa.Integer()),
        sa.Column("completed_failed_count", sa.Integer()),
        sa.Column("source_dir", sa.Text()),
        sa.Column("backup_dir", sa.Text()),
        sa.Column("total_bytes", sa.BigInteger()),
        sa.Column("pull_failure", sa.Text()),
        sa.Column("push_failure", sa.Text()),
        sa.Column("abort_requested_by", sa.String(64)),
        sa.Column("abort_reason", sa.Text()),
        sa.Column("stalled_at", _TS),
        sa.Column("silent_targets", sa.JSON()),
        sa.Column("stalled_after_seconds", sa.Float()),
        sa.Column("batches_total", sa.Integer()),
        sa.Column("batches_finished", sa.Integer(), nullable=False),
        sa.Column("awaiting_batch", sa.Integer()),
        sa.Column("winners", sa.JSON(), nullable=False),
        sa.Column("pull_requested_at", _TS),
        sa.Column("pulled_at", _TS),
        sa.Column("pull_failed_at", _TS),
        sa.Column("push_requested_at", _TS),
        sa.Column("pushed_at", _TS),
        sa.Column("push_failed_at", _TS),
        sa.Column("update_requested_at", _TS),
        sa.Column("started_at", _TS),
        sa.Column("completed_at", _TS),
        sa.Column("abort_requested_at", _TS),
        sa.Column("first_event_at", _TS, nullable=False),
        sa.Column("last_event_at", _TS, nullable=False),
        sa.Column("last_progress_at", _TS),
        sa.Column("event_count", sa.Integer(), nullable=False),
        *(
            sa.Column(f"{what}_{count}", sa.Integer(), nullable=False)
            for what in ("servers", "ips", "cdn_dirs")
            for count in ("expected", "ok", "failed", "pending", "not_run")
        ),
        sa.Column("targets_requested", sa.Integer(), nullable=False),
        sa.Column("targets_ok", sa.Integer(), nullable=False),
        sa.Column("targets_failed", sa.Integer(), nullable=False),
        sa.Column("files_count", sa.Integer(), nullable=False),
    )
    for column in (
        "project", "area", "update_type", "stage", "status", "first_event_at", "last_event_at", "parent_updateid"
    ):
        op.create_index(f"ix_projection_updates_{column}", "projection_updates", [column])

    op.create_table(
        "projection_rsync_targets",
        sa.Column("updateid", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("ip", sa.String(128)),
        sa.Column("port", sa.Integer()),
        sa.Column("module", sa.String(64)),
        sa.Column("user", sa.String(64)),
        sa.Column("requested", sa.Boolean(), nullable=False),
        sa.Column("ok", sa.Boolean()),
        sa.Column("bytes", sa.BigInteger()),
        sa.Column("seconds", sa.Float()),
        sa.Column("error", sa.Text()),
        sa.Column("reported_at", _TS),
        sa.Column("result_key", sa.String(200)),
    )
    op.create_table(
        "projection_ips",
        sa.Column("updateid", sa.String(64), primary_key=True),
        sa.Column("ip", sa.String(128), primary_key=True),
        sa.Column("group", sa.String(32)),
        sa.Column("expected", sa.Boolean(), nullable=False),
        sa.Column("reported", sa.Boolean(), nullable=False),
        sa.Column("not_run", sa.Boolean(), nullable=False),
        sa.Column("ok", sa.Boolean()),
        sa.Column("servers_ok", sa.Integer(), nullable=False),
        sa.Column("servers_failed", sa.Integer(), nullable=False),
        sa.Column("finished_at", _TS),
        sa.Column("result_key", sa.String(200)),
    )
    op.create_table(
        "projection_servers",
        sa.Column("updateid", sa.String(64), primary_key=True),
        sa.Column("ip", sa.String(128), primary_key=True),
        sa.Column("server", sa.String(128), primary_key=True),
        sa.Column("group", sa.String(32)),
        sa.Column("expected", sa.Boolean(), nullable=False),
        sa.Column("reported", sa.Boolean(), nullable=False),
        sa.Column("ok", sa.Boolean()),
        sa.Column("update_status", sa.Boolean()),
        sa.Column("update_text", sa.Text()),
        sa.Column("erl_status", sa.Boolean()),
        sa.Column("erl_text", sa.Text()),
        sa.Column("finished_at", _TS),
        sa.Column("result_key", sa.String(200)),
    )
    op.create_table(
        "projection_cdn_dirs",
        sa.Column("updateid", sa.String(64), primary_key=True),
        sa.Column("cdn_root_url", sa.String(255), primary_key=True),
        sa.Column("cdn_dir", sa.String(128), primary_key=True),
        sa.Column("expected", sa.Boolean(), nullable=False),
        sa.Column("not_run", sa.Boolean(), nullable=False),
        sa.Column("status", sa.Boolean()),
        sa.Column("data", sa.Text()),
        sa.Column("reported_by", sa.String(64)),
        sa.Column("finished_at", _TS),
        sa.Column("result_key", sa.String(200)),
    )
    op.create_table(
        "projection_files",
        sa.Column("updateid", sa.String(64), primary_key=True),
        sa.Column("name_key", sa.String(64), primary_key=True),
        sa.Column("file_name", sa.Text(), nullable=False),
        sa.Column("file_md5", sa.String(32), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("pulled", sa.Boolean(), nullable=False),
        sa.Column("pushed", sa.Boolean(), nullable=False),
        sa.Column("in_update", sa.Boolean(), nullable=False),
        sa.Column("source_key", sa.String(220), nullable=False),
    )
    op.create_table(
        "projection_batches",
        sa.Column("updateid", sa.String(64), primary_key=True),
        sa.Column("batch", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("batches", sa.Integer()),
        sa.Column("ips", sa.JSON()),
        sa.Column("cdn_dirs", sa.JSON()),
        sa.Column("ok_count", sa.Integer()),
        sa.Column("failed_count", sa.Integer()),
        sa.Column("next", sa.String(16)),
        sa.Column("finished_at", _TS),
        sa.Column("result_key", sa.String(200)),
        sa.Column("confirmed_by", sa.String(64)),
        sa.Column("confirmed_at", _TS),
        sa.Column("confirm_key", sa.String(200)),
    )


def downgrade() -> None:
    for table in (
        "projection_batches",
        "projection_files",
        "projection_cdn_dirs",
        "projection_servers",
        "projection_ips",
        "projection_rsync_targets",
        "projection_updates",
        "projection_rejected",
        "projection_applied",
        "projection_head",
        "projection_event_log",
    ):
        op.drop_table(table)
