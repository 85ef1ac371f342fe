"""bus: the content hash (and verified publisher) of each processed event, to tell a conflict from a duplicate

Revision ID: bus_0002
Revises: bus_0001
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "bus_0002"
down_revision = "bus_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable: ids marked before this revision have no hash; a redelivery of one is taken as a duplicate.
    with op.batch_alter_table("bus_processed_events") as batch:
        batch.add_column(sa.Column("content_hash", sa.String(64), nullable=True))
        batch.add_column(sa.Column("publisher", sa.String(128), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("bus_processed_events") as batch:
        batch.drop_column("publisher")
        batch.drop_column("content_hash")
