"""Alembic environment: the URL comes from the caller (``domain.db.upgrade``) or ``HOTUPDATE_DB_URL``."""

from __future__ import annotations

import os

from alembic import context

from domain.db import Base, make_engine

MIGRATION_LOCK_KEY = 0x686F7475  # "hotu": the advisory lock that serialises migrations of a database

config = context.config
url = config.attributes.get("url") or os.environ.get("HOTUPDATE_DB_URL")
if not url:
    raise SystemExit("no database URL: pass one to 'hotupdate db upgrade --url' or set HOTUPDATE_DB_URL")

engine = make_engine(url)
with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            # One migration of this database at a time (see domain.db.upgrade): the next waits here,
            # then reads the version table after this one committed, and finds nothing to do.
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY})")
        context.run_migrations()
engine.dispose()
