"""Replaying a window of the log (tens of thousands of events) in one transaction, the view kept in memory.

:func:`replay_window` folds and writes a window here (a short replay, or a window the reader
process could not fold); :func:`write_folded` writes one the reader process folded
(:mod:`projections.replay_fold`).

The view rows of the window's updates live as plain rows (:class:`projections.view.NewRow`,
or :class:`projections.view.LoadedRow` for an update the target already holds from an earlier
window) in a :class:`projections.view.RowCache` that knows every scope: the reducers never
ask the database. Each update's counts, stage and status are derived once, from its rows in
memory (:func:`projections.view.refresh_from_rows`), and each row is written once, with one
executemany of plain tuples per table on the DBAPI cursor (SQLAlchemy's own bind processors
turn times and JSON into what it would have stored). The log rows are copied the same way.

The reducers are the live projection's, applied in log order, so the view is the same. An
event whose reducer raises must be left out entirely; a reducer may have changed rows before it
raised, so the window's transaction is rolled back and :class:`ReducerFailed` says where: the
caller replays the events before it again (the same events on the same state cannot fail) and
hands that event to the careful path (a savepoint per event).
"""

from __future__ import annotations

import contextlib
import gc
import operator
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, MetaData, Table, bindparam, insert, select
from sqlalchemy.orm import Session

from projections import log as event_log
from projections import view
from projections.bulk_insert import insert_rows
from projections.models import AppliedEvent, LoggedEvent, UpdateRow
from projections.replay_fold import FoldedWindow, derive_all, new_rows, table_model
from projections.replay_reader import LOG_COLUMNS, decode_row

_POSITION = LOG_COLUMNS.index("position")
_CHAIN = operator.itemgetter(*(LOG_COLUMNS.index(n) for n in (
    "position", "event_id", "type", "updateid", "prev_hash", "hash", "envelope", "publisher")))
_ENVELOPE = LOG_COLUMNS.index("envelope")
_HASH = LOG_COLUMNS.index("hash")
_UPDATEID = LOG_COLUMNS.index("updateid")
_IN_CHUNK = 500


class ReducerFailed(Exception):
    """The reducer of the window's ``index``-th row raised; nothing of the window was kept."""

    def __init__(self, index: int, error: Exception) -> None:
        super().__init__(f"row {index} of the window: {error!r}")
        self.index, self.error = index, error


@dataclass
class WindowResult:
    events: int  # rows copied (those before a broken link)
    applied: int
    last_position: int
    last_hash: str
    unapplied: list[tuple[int, str, str, str]]  # (position, event id, type, reason)
    broken: tuple[int, str] | None  # (position, reason) of the first row that does not chain on


def replay_window(target: Engine, rows: Sequence[Sequence[Any]], *, stored: bool = False,
                  checked: bool = False) -> WindowResult:
    """Copy and apply ``rows`` (values in :data:`LOG_COLUMNS` order, times in UTC) in one transaction.

    ``stored``: the values are as the target's database stores them (read from a log of the same
    kind of database), and are copied as they are. ``checked``: their links were checked already
    (:func:`projections.replay_reader.read_chunks`): only the first row's link to the target's head
    is checked here. Each event is decoded just before it is applied.

    Raises :class:`ReducerFailed` (having kept nothing) if an event's reducer raises.
    """
    # The window allocates millions of objects that live until it ends and form no cycles the
    # collector must break: its passes over the growing heap cost ≈ 10 µs an event.
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _replay_window(target, rows, stored, checked)
    finally:
        if collecting:
            gc.enable()


def _replay_window(target: Engine, rows: Sequence[Sequence[Any]], stored: bool, checked: bool) -> WindowResult:
    with Session(target) as session, session.begin():
        cache = view.RowCache(plain_updates=True)
        session.info[view.ROW_CACHE] = cache
        head = event_log.lock_head(session)
        if not checked:
            good, broken = _chained(rows, head.position, head.hash)
        else:
            good, broken = _chained(rows[:1], head.position, head.hash)  # the rest were checked by the reader
            if broken is not None:
                raise ValueError(f"the checked rows do not follow the target's head ({broken})")
            good = rows
        connection = session.connection()
        insert_rows(connection, LoggedEvent.__table__, good, stored=stored)
        _known_updates(session, dict.fromkeys(row[_UPDATEID] for row in good))
        unapplied: list[tuple[int, str, str, str]] = []
        applied: list[tuple[str, int, str]] = []
        for index, row in enumerate(good):
            done = decode_row(row[_ENVELOPE])
            if isinstance(done, str):  # as the careful path: the catalogue changed since it was logged
                position, event_id, event_type = _CHAIN(row)[:3]
                unapplied.append((position, event_id, event_type, done))
                continue
            envelope, event = done
            try:
                view.apply(session, envelope, event, derive=False)
            except Exception as exc:  # roll the window back: the caller leaves this event out
                raise ReducerFailed(index, exc) from exc
            applied.append((envelope.id, row[_POSITION], envelope.updateid))
        insert_rows(connection, AppliedEvent.__table__, applied)
        derive_all(cache)
        _write_view(connection, cache)
        if good:
            head.position, head.hash = good[-1][_POSITION], good[-1][_HASH]
        head.version += 1
        event_log.store_head(session, head)
    return WindowResult(len(good), len(applied), head.position, head.hash, unapplied, broken)


SOURCE_SCHEMA = "replay_source"
"""Where :func:`attach_source` attaches a SQLite source to the target's connection."""


@contextlib.contextmanager
def source_attached(connection: Connection, path: str | None) -> Iterator[None]:
    """The SQLite source file attached to the target's SQLite connection (so log rows are copied by SQL),
    then detached (the connection goes back to the pool). ``path`` None: nothing to attach."""
    if path is None:
        yield
        return
    connection.exec_driver_sql(f"ATTACH DATABASE ? AS {SOURCE_SCHEMA}", (path,))
    connection.commit()
    try:
        yield
    finally:
        connection.rollback()
        connection.exec_driver_sql(f"DETACH DATABASE {SOURCE_SCHEMA}")
        connection.commit()


def write_folded(connection: Connection, window: FoldedWindow, *, stored: bool) -> WindowResult:
    """Write a window the reader process folded (:mod:`projections.replay_fold`) in one transaction.

    The log rows come with the window, or (``window.log_rows`` None) are copied from the source
    attached by :func:`attach_source`, verbatim, by one INSERT … SELECT. The applied events are the
    window's log rows but the ones left unapplied, taken from the rows just written.
    """
    with Session(bind=connection) as session, session.begin():
        head = event_log.lock_head(session)
        if (head.position + 1, head.hash) != (window.first_position, window.prev_hash):
            raise ValueError(f"the window from {window.first_position} does not follow the target's head "
                             f"(position {head.position})")
        conn = session.connection()
        bounds = {"first": window.first_position, "last": window.last_position}
        if window.log_rows is None:
            conn.execute(_copy_log_statement(), bounds)
        else:
            insert_rows(conn, LoggedEvent.__table__, window.log_rows, stored=stored)
        skipped = [u[0] for u in window.unapplied]
        log_table = LoggedEvent.__table__
        conn.execute(insert(AppliedEvent).from_select(
            ["event_id", "position", "updateid"],
            select(log_table.c.event_id, log_table.c.position, log_table.c.updateid).where(
                log_table.c.position.between(window.first_position, window.last_position),
                log_table.c.position.not_in(skipped),
            ),
        ))
        for name, rows in window.new_rows.items():
            insert_rows(conn, table_model(name).__table__, rows)
        for name, params in window.changed_rows.items():
            conn.execute(view.update_statement(table_model(name)), params)
        head.position, head.hash = window.last_position, window.last_hash
        head.version += 1
        event_log.store_head(session, head)
    return WindowResult(window.events, window.applied, window.last_position, window.last_hash,
                        list(window.unapplied), None)


def _copy_log_statement() -> Any:
    """INSERT INTO the log SELECT its rows from the attached source's log, between two positions."""
    table: Table = LoggedEvent.__table__  # type: ignore[assignment]
    source = table.to_metadata(MetaData(), schema=SOURCE_SCHEMA)
    return insert(table).from_select(
        [c.name for c in table.columns],
        select(*(source.c[c.name] for c in table.columns)).where(
            source.c.position.between(bindparam("first"), bindparam("last"))).order_by(source.c.position),
    )


def _chained(rows: Sequence[Sequence[Any]], position: int, prev_hash: str
             ) -> tuple[Sequence[Sequence[Any]], tuple[int, str] | None]:
    """The rows that chain on from (position, prev_hash), up to the first that does not, and what broke."""
    for index, row in enumerate(rows):
        problem = event_log.row_problem(event_log.ChainRow(*_CHAIN(row)), position + 1, prev_hash)
        if problem:
            return rows[:index], (row[_POSITION], problem)
        position, prev_hash = row[_POSITION], row[_HASH]
    return rows, None


def _known_updates(session: Session, updateids: dict[str, None]) -> None:
    """Read the updates the target holds already (from an earlier window) whole; mark the others new."""
    ids = list(updateids)
    present: set[str] = set()
    for start in range(0, len(ids), _IN_CHUNK):
        chunk = ids[start:start + _IN_CHUNK]
        present.update(session.scalars(select(UpdateRow.updateid).where(UpdateRow.updateid.in_(chunk))))
    for updateid in ids:
        if updateid in present:
            view.load_update(session, updateid)
        else:
            view.mark_new_update(session, updateid)


def _write_view(connection: Connection, cache: view.RowCache) -> None:
    for name, rows in new_rows(cache).items():
        insert_rows(connection, table_model(name).__table__, rows)
    view.write_changed_rows(connection, cache)
