"""The database a rebuild writes: refused unless empty (or forced), set up for building it, settled after.

Also where a rebuild ends (a position, or the last event received by a time) and whether two URLs
name the same database.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, delete, func, literal, select
from sqlalchemy import event as sqlalchemy_event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from domain.db import make_engine
from projections import log as event_log
from projections.models import GENESIS_HASH, VIEW_TABLES, AppliedEvent, LoggedEvent, RejectedEvent

log = logging.getLogger(__name__)


SQLITE_CACHE_KIB = 65_536
"""The SQLite target's page cache while it is built (it grows to this, whatever the log's length)."""


class RebuildError(Exception):
    """The rebuild cannot be done as asked (the reason is fit to show the operator)."""


class TargetNotEmpty(RebuildError):
    pass


def target_engine(url: str) -> Engine:
    """The target's engine; on SQLite, set up for building a file from scratch (see :func:`settle`).

    It keeps a rollback journal (no write-ahead log: each page is written once, not to the log and
    then again into the file) in a file beside it, not in memory: the journal holds the pages a
    window changes, up to one per insert into each index with random keys (the log's event ids and
    hashes, the applied events' ids), and in memory that grew a rebuild's RSS with the log (263 to
    391 MiB over 1,000,000 events; BENCHMARKS.md §4a). The file is kept between windows, its header
    zeroed (PERSIST: truncating and growing it again each window cost twice the system time), and
    nothing is synced to disk until the end. A rolled back window is still rolled back; a rebuild
    killed mid-way (``kill -9``, a crash) can leave the target unusable: rebuild again into a new file.
    """
    engine = make_engine(url)
    if engine.dialect.name == "sqlite":

        @sqlalchemy_event.listens_for(engine, "connect")
        def _building(dbapi_conn: Any, _record: Any) -> None:  # after make_engine's own pragmas
            cursor = dbapi_conn.cursor()
            try:
                cursor.execute("PRAGMA journal_mode=PERSIST")
            except sqlite3.OperationalError:  # another connection has the file open: keep the write-ahead log
                log.info("rebuild: the target is open elsewhere; it keeps its write-ahead log")
            cursor.execute("PRAGMA synchronous=OFF")
            # KiB. The log's unique indexes take random keys, so a bigger cache saves page reads, but the
            # cache is what a rebuild's memory grows with as the file does: 64 MiB bounds it early
            # (at 256 MiB, RSS still grew from 479 to 565 MiB between 200,000 and 1,000,000 events).
            cursor.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")
            cursor.close()

    return engine


SOURCE_SCHEMA = "rebuild_source"
"""Where :func:`source_attached` attaches a SQLite source to the target's connection."""


@contextlib.contextmanager
def source_attached(connection: Connection, source: Engine, target: Engine) -> Iterator[bool]:
    """The SQLite source file attached to the target's SQLite ``connection`` as :data:`SOURCE_SCHEMA` (then
    detached); whether it is (not unless both are SQLite files): then log rows are copied by SQL."""
    path = source.url.database
    if not (source.dialect.name == target.dialect.name == "sqlite") or not path or path == ":memory:":
        yield False
        return
    connection.exec_driver_sql(f"ATTACH DATABASE ? AS {SOURCE_SCHEMA}", (path,))
    connection.commit()
    try:
        yield True
    finally:
        connection.rollback()
        connection.exec_driver_sql(f"DETACH DATABASE {SOURCE_SCHEMA}")
        connection.commit()


def settle(target: Engine) -> None:
    """Leave a SQLite target as every other connection expects it (write-ahead log), synced to disk."""
    if target.dialect.name != "sqlite":
        return
    with target.connect() as connection:
        connection.exec_driver_sql("PRAGMA synchronous=FULL")
        if connection.exec_driver_sql("PRAGMA journal_mode").scalar() != "wal":  # (it is, if open elsewhere)
            connection.exec_driver_sql("PRAGMA journal_mode=DELETE")  # the journal file kept while building goes
            connection.exec_driver_sql("PRAGMA journal_mode=WAL")
        connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    target.dispose()
    path = target.url.database
    if path and path != ":memory:" and Path(path).exists():
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def rebuild_end(session: Session, *, until_position: int | None = None, until_time: datetime | None = None) -> int:
    """The last position to rebuild: the head, or less if a position or a time bounds it."""
    end = event_log.read_head(session)[0]
    if until_position is not None:
        end = min(end, until_position)
    if until_time is not None:
        # The view at that instant is the log's prefix committed by then: it ends before
        # the first event received later (received times grow with positions).
        later = session.execute(
            select(func.min(LoggedEvent.position)).where(
                LoggedEvent.received_at > until_time.astimezone(UTC), LoggedEvent.position <= end
            )
        ).scalar_one_or_none()
        if later is not None:
            end = later - 1
    return max(end, 0)


def prepare_target(target: Engine, *, force: bool) -> None:
    """Refuse a target with projection data (unless ``force``: then empty its projection tables)."""
    tables: tuple[type[Any], ...] = (LoggedEvent, AppliedEvent, RejectedEvent, *VIEW_TABLES)
    with Session(target) as session, session.begin():
        head = event_log.lock_head(session)
        used = [
            model.__tablename__ for model in tables
            if session.execute(select(literal(1)).select_from(model).limit(1)).first() is not None
        ]
        if head.position and not used:
            used.append("projection_head")
        if not used:
            return
        if not force:
            raise TargetNotEmpty(f"the target already holds data ({', '.join(used)}); pass --force to replace it")
        log.warning("rebuild: emptying the target's %s", ", ".join(used))
        for model in tables:
            session.execute(delete(model))
        head.position, head.hash = 0, GENESIS_HASH
        head.version += 1  # an open dashboard on the target reloads
        event_log.store_head(session, head)


def same_database(a: str, b: str) -> bool:
    """Whether two URLs name the same database (best effort: SQLite paths resolved, host names looked up)."""
    ua, ub = make_url(a), make_url(b)
    if ua.get_backend_name() != ub.get_backend_name():
        return False
    if ua.get_backend_name() == "sqlite":
        if not ua.database or not ub.database or ":memory:" in (ua.database, ub.database):
            return False
        return Path(ua.database).resolve() == Path(ub.database).resolve()
    return (ua.port, ua.database) == (ub.port, ub.database) and bool(_addresses(ua.host) & _addresses(ub.host))


def _addresses(host: str | None) -> frozenset[str]:
    try:
        return frozenset(str(info[4][0]) for info in socket.getaddrinfo(host or "localhost", None))
    except OSError:
        return frozenset({host or ""})
