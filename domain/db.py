"""Database engines and Alembic migrations, shared by every component that keeps state.

Each component owns an Alembic *branch* (``bus``, ``cmdb``, ``projection``,
``ops_executor``, ``notifier``) with its migrations beside its code, registered by its package
as a ``hotupdate.migrations`` entry point; ``upgrade(url, branch)``
brings one database to the head of the branches that component needs.
SQLite files are the embedded default; PostgreSQL is the production choice.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import DeclarativeBase

MIGRATIONS_GROUP = "hotupdate.migrations"


@functools.cache
def migration_branches() -> dict[str, Path]:
    """Every registered Alembic branch and its folder, whichever component asks.

    Each package that owns tables registers its folder as an entry point of this group, so this
    module names no package above it. All of them are always known, not just the caller's: one
    database may hold several components' tables (one PostgreSQL database for every service is
    common), and Alembic refuses to upgrade a database holding a revision it cannot locate.
    """
    branches = {ep.name: Path(ep.load()) for ep in entry_points(group=MIGRATIONS_GROUP)}
    if not branches:
        raise RuntimeError(f"no package registers {MIGRATIONS_GROUP!r} entry points: is hotupdate installed "
                           "(pip install -e .)?")
    return branches


class Base(DeclarativeBase):
    """Declarative base for every table hotupdate owns (one metadata, several branches)."""


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine with SQLite made safe for several processes (WAL, busy timeout, foreign keys)."""
    if url.startswith("sqlite"):
        kwargs.setdefault("connect_args", {"timeout": 30})
        engine = create_engine(url, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(url, **kwargs)


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).resolve().parent / "alembic"))
    cfg.set_main_option(
        "version_locations", " ".join(str(p) for p in migration_branches().values() if p.is_dir())
    )
    cfg.set_main_option("path_separator", "space")
    cfg.attributes["url"] = url
    return cfg


def upgrade(url: str, *branches: str) -> None:
    """Migrate ``url`` to the head of each named branch (all branches when none is named).

    Components migrate at start-up, so two of them started together (the projection and the
    dashboard on one database) would otherwise both find a table missing and both create it.
    Migrations of one database run one at a time: on PostgreSQL under an advisory lock taken in
    the migration's transaction (``domain/alembic/env.py``), on a SQLite file under a lock on a
    file beside it (not on the database file itself: closing any descriptor of a file drops the
    process's POSIX locks on it, which are SQLite's own).
    """
    cfg = alembic_config(url)
    targets = [f"{b}@head" for b in branches] or ["heads"]
    with _sqlite_migration_lock(url):
        for target in targets:
            command.upgrade(cfg, target)


@contextlib.contextmanager
def _sqlite_migration_lock(url: str) -> Iterator[None]:
    parsed = make_url(url)
    path = parsed.database if parsed.get_backend_name() == "sqlite" else None
    if not path or path == ":memory:" or path.startswith("file:"):
        yield
        return
    fd = os.open(f"{path}-migrate.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock
