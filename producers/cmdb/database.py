"""The CMDB's database: migrated on open, one transaction per request or event, hooks after commit.

A transaction that queued events in the outbox calls the ``after_outbox_commit`` hooks
once it has committed, so the relay publishes at once instead of at its next poll.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, event
from sqlalchemy.orm import Session, sessionmaker

from domain.db import make_engine, upgrade

log = logging.getLogger(__name__)

OUTBOX_TOUCHED = "cmdb_outbox_touched"


class CmdbDatabase:
    """Engine and sessions of the CMDB's database (SQLite file or PostgreSQL)."""

    def __init__(self, url: str, *, migrate: bool = True, id_key: bytes | None = None) -> None:
        if migrate:
            upgrade(url, "cmdb")
        self.url = url
        # The key the CMDB derives its events' ids with (bus.id_keys): set by the composition root.
        self.id_key = id_key
        self.engine = make_engine(url)
        if self.engine.dialect.name == "sqlite":
            _begin_immediate(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self.after_outbox_commit: list[Callable[[], None]] = []

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session inside one transaction: committed on success, rolled back on any exception."""
        with self._sessions() as session:
            with session.begin():
                yield session
            if session.info.pop(OUTBOX_TOUCHED, False):
                for hook in self.after_outbox_commit:
                    try:
                        hook()
                    except Exception:  # a wake-up failing must not undo a committed request
                        log.exception("after-commit hook failed")

    def close(self) -> None:
        self.engine.dispose()


def _begin_immediate(engine: Engine) -> None:
    """Make SQLite take its write lock when a transaction begins.

    With pysqlite's deferred BEGIN, two transactions that read and then write fail with
    "database is locked" instead of waiting; BEGIN IMMEDIATE waits for the busy timeout.
    """

    @event.listens_for(engine, "connect")
    def _no_implicit_begin(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")
