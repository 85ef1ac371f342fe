"""projection: an absent JSON value is SQL NULL (rows a rebuild or an explicit None wrote as JSON null)

Revision ID: projection_0005
Revises: projection_0004
Create Date: 2026-12-06
"""

from __future__ import annotations

from alembic import op

revision = "projection_0005"
down_revision = "projection_0004"
branch_labels = None
depends_on = None

# The nullable JSON columns (projections/models.py, OPTIONAL_JSON); the models now write None as NULL.
COLUMNS = {
    "projection_updates": ("erlang_cmd_list", "rollout", "not_run", "silent_targets"),
    "projection_batches": ("ips", "cdn_dirs"),
}


def upgrade() -> None:
    # CAST: PostgreSQL's json type has no equality operator; SQLite stores the text itself.
    for table, columns in COLUMNS.items():
        for column in columns:
            op.execute(f"UPDATE {table} SET {column} = NULL WHERE CAST({column} AS TEXT) = 'null'")  # noqa: S608


def downgrade() -> None:
    pass  # NULL and JSON null read the same through the models: nothing to undo
