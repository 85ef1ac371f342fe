"""bus: processed events (consumer idempotency)

Revision ID: bus_0001
Revises:
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "bus_0001"
down_revision = None
branch_labels = ("bus",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "bus_processed_events",
        sa.Column("consumer", sa.String(128), primary_key=True),
        sa.Column("event_id", sa.String(128), primary_key=True),
        sa.Column("event_type", sa.String(128), nullable=False),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("bus_processed_events")
