"""cmdb: releases announced by teams' pipelines (issue 17)

Revision ID: cmdb_0003
Revises: cmdb_0002
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "cmdb_0003"
down_revision = "cmdb_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "cmdb_releases",
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column("announced_updateid", sa.String(64), nullable=False),
        sa.Column("project", sa.String(64), nullable=False),
        sa.Column("area_code", sa.String(64), nullable=False),
        sa.Column("update_type", sa.String(16), nullable=False),
        sa.Column("version", sa.String(32), nullable=False),
        sa.Column("client_type", sa.Integer, nullable=True),
        sa.Column("files", sa.JSON, nullable=False),
        sa.Column("announced_by", sa.String(64), nullable=False),
        sa.Column("publisher", sa.String(128), nullable=False),
        sa.Column("link", sa.Text, nullable=False),
        sa.Column("announced_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("update_id", sa.String(36), sa.ForeignKey("cmdb_hot_updates.id"), nullable=True),
        sa.Column("pull_started_by", sa.String(64), nullable=True),
        sa.UniqueConstraint("project", "area_code", "update_type", "version", name="uq_cmdb_releases_version"),
    )


def downgrade() -> None:
    op.drop_table("cmdb_releases")
