"""Alembic environment: the URL comes from the caller (``domain.db.upgrade``) or ``HOTUPDATE_DB_URL``."""

from __future__ import annotations

import os

from alembic import context

from domain.db import Base, make_engine

config = context.config
url = config.attributes.get("url") or os.environ.get("HOTUPDATE_DB_URL")
if not url:
    raise SystemExit("no database URL: pass one to 'hotupdate db upgrade --url' or set HOTUPDATE_DB_URL")

engine = make_engine(url)
with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
engine.dispose()
