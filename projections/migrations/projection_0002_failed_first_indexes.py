"""projection: indexes that serve the detail's failed-first order of servers and IPs

Revision ID: projection_0002
Revises: projection_0001
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "projection_0002"
down_revision = "projection_0001"
branch_labels = None
depends_on = None

# (name, table, the update and rank columns, the columns ordered by code point)
_SERVERS = ("ix_projection_servers_failed_first", "projection_servers", ("updateid", "reported", "ok"),
            ("ip", "server"))
_IPS = ("ix_projection_ips_failed_first", "projection_ips", ("updateid", "ok", "reported", "not_run"), ("ip",))


def upgrade() -> None:
    # The detail orders IPs and server names by code point: on PostgreSQL it says COLLATE "C", and
    # an index serves that order only if its columns have the same collation. SQLite's default
    # (binary) already compares by code point. The models declare the plain columns (what
    # reflection reports for both), so the migrations still compare equal to them.
    postgres = op.get_bind().dialect.name == "postgresql"
    for name, table, keys, names in (_SERVERS, _IPS):
        ordered = [sa.text(f'"{c}" COLLATE "C"') for c in names] if postgres else list(names)
        op.create_index(name, table, [*keys, *ordered])


def downgrade() -> None:
    for name, table, _keys, _names in (_IPS, _SERVERS):
        op.drop_index(name, table_name=table)
