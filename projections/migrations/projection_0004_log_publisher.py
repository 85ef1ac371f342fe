"""projection: the verified publisher of each logged event, covered by the hash chain

Revision ID: projection_0004
Revises: projection_0003
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "projection_0004"
down_revision = "projection_0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable on purpose: NULL marks a row logged before publishers were recorded, whose hash
    # covers the envelope alone (projections/log.py); those rows must keep verifying as they are.
    with op.batch_alter_table("projection_event_log") as batch:
        batch.add_column(sa.Column("publisher", sa.String(128), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("projection_event_log") as batch:
        batch.drop_column("publisher")
