"""cmdb: operator control (issue 9): relation, rollout, automatic push, outcome, batches, stalls

Revision ID: cmdb_0002
Revises: cmdb_0001
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "cmdb_0002"
down_revision = "cmdb_0001"
branch_labels = None
depends_on = None

_COLUMNS = (
    ("relation", sa.String(16)),
    ("rollout", sa.JSON),
    ("auto_push", sa.JSON),
    ("outcome", sa.String(16)),
    ("completion_reason", sa.Text),
    ("not_run", sa.JSON),
    ("last_batch", sa.JSON),
    ("last_event_at", sa.DateTime(timezone=True)),
    ("stalled_for", sa.DateTime(timezone=True)),
)


def upgrade() -> None:
    for name, type_ in _COLUMNS:
        op.add_column("cmdb_hot_updates", sa.Column(name, type_, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("cmdb_hot_updates") as batch:
        for name, _type in reversed(_COLUMNS):
            batch.drop_column(name)
