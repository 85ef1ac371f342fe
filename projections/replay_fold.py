"""Folding the log into view rows in memory, window by window, for a replay's log reader process.

A long replay runs in two processes (:mod:`projections.replay_reader`): the reader reads the log,
checks its hash links, decodes each event and folds it into the view with the live projection's
reducers (:func:`projections.view.apply`) on plain in-memory rows (:class:`projections.view.RowCache`),
then hands the main process each window's *view rows* as plain tuples — not the decoded events,
whose pickling cost as much as folding them. The main process only writes (:func:`
projections.replay_window.write_folded`).

Between windows the :class:`Folder` keeps the rows of the updates still in progress (touched in the
window just folded and not completed), so an update that spans windows is not read back. An update
let go and touched again later is read back from the target, once the main process has committed
the window that last wrote it (:class:`Committed`).

A reducer that raises ends the fold (:class:`FoldFailed`, nothing of that window sent): the main
process replays that window itself, the careful way (an event the view cannot take is left out, as
the live projection left it), and starts a new reader after it.
"""

from __future__ import annotations

import operator
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from sqlalchemy import Engine, create_engine, select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from domain.db import make_engine
from projections import log as event_log
from projections import view
from projections.models import VIEW_TABLES, UpdateRow
from projections.replay_reader import LOG_COLUMNS, decode_row

_POSITION = LOG_COLUMNS.index("position")
_HASH = LOG_COLUMNS.index("hash")
_UPDATEID = LOG_COLUMNS.index("updateid")
_ENVELOPE = LOG_COLUMNS.index("envelope")
_COLUMNS = operator.itemgetter(*(LOG_COLUMNS.index(n) for n in ("event_id", "type", "updateid")))
_CHAIN = operator.itemgetter(*(LOG_COLUMNS.index(n) for n in (
    "position", "event_id", "type", "updateid", "prev_hash", "hash", "envelope", "publisher")))
_META = operator.itemgetter(*(LOG_COLUMNS.index(n) for n in ("position", "event_id", "type")))
_TABLES: dict[str, Any] = {model.__tablename__: model for model in VIEW_TABLES}


@dataclass
class FoldedWindow:
    """A window of the log folded into view rows: what the main process writes in one transaction.

    ``new_rows``: rows first written by this window, by table, values in column order (Python
    values: the writer binds them). ``changed_rows``: rows written before that this window changed,
    as UPDATE parameters (:func:`projections.view.write_changed_rows`' form). ``log_rows``: the log
    rows themselves, when the writer cannot copy them from the source with SQL (None: it can).
    """

    first_position: int
    prev_hash: str
    last_position: int
    last_hash: str
    events: int
    applied: int
    unapplied: list[tuple[int, str, str, str]]  # (position, event id, type, reason)
    new_rows: dict[str, list[tuple[Any, ...]]] = field(default_factory=dict)
    changed_rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    log_rows: list[tuple[Any, ...]] | None = None


@dataclass
class FoldFailed:
    """The reducer of an event of the window from ``first_position`` to ``last_position`` raised."""

    first_position: int
    prev_hash: str
    last_position: int
    reason: str


class Committed:
    """How many of this folder's windows the main process has committed (shared with it)."""

    def __init__(self, read: Callable[[], int], stopped: Callable[[], bool]) -> None:
        self._read, self._stopped = read, stopped

    def wait_for(self, window: int) -> None:
        while self._read() < window:
            if self._stopped():
                raise InterruptedError("the replay stopped")
            time.sleep(0.002)


def read_only_engine(url: str) -> Engine:
    """An engine that reads the target as the main process builds it, without touching its settings.

    (The main process keeps the SQLite file's journal in memory while it builds it; an ordinary
    connection would switch it back to its write-ahead log.)
    """
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return make_engine(url)
    uri = f"file:{quote(parsed.database)}?mode=ro"
    return create_engine("sqlite://", creator=lambda: sqlite3.connect(uri, uri=True, timeout=60))


class Folder:
    """Folds windows of checked log rows and their decoded events into :class:`FoldedWindow` s.

    ``target``: where the main process writes (read back from for updates let go earlier);
    ``committed``: how far the main process is; ``copy_log``: whether the log rows travel with
    the window (False: the writer copies them from the source itself); ``existing``: the updates
    the target held when this folder began.
    """

    def __init__(self, target: Engine, committed: Committed, *, copy_log: bool, existing: set[str]) -> None:
        self.target, self.committed, self.copy_log = target, committed, copy_log
        self.windows = 0
        self.cache = view.RowCache(plain_updates=True)  # the rows of the updates kept between windows
        self.kept: set[str] = set()
        # update id → the window that last wrote its rows (0: the target held it when this folder began)
        self.written_in: dict[str, int] = dict.fromkeys(existing, 0)

    def fold(self, rows: Sequence[tuple[Any, ...]], prev_hash: str) -> FoldedWindow | FoldFailed:
        """Fold ``rows`` (their hash links checked: they chain on from ``prev_hash``), decoding each event
        as it goes and checking that the row's id, type and update columns agree with it."""
        self.windows += 1
        cache = self.cache
        touched = dict.fromkeys(row[_UPDATEID] for row in rows)
        with Session(self.target) as session:
            session.info[view.ROW_CACHE] = cache
            self._know(session, touched)
            session.rollback()  # release the read (SQLite: the writer waits for readers to commit)
            unapplied: list[tuple[int, str, str, str]] = []
            applied = 0
            for row in rows:
                done = decode_row(row[_ENVELOPE])
                if (isinstance(done, str) or (done[0].id, done[0].type, done[0].updateid) != _COLUMNS(row)) \
                        and event_log.columns_problem(event_log.ChainRow(*_CHAIN(row))):
                    # the log is broken at this row: the main process replays up to it and says so
                    return FoldFailed(rows[0][_POSITION], prev_hash, rows[-1][_POSITION],
                                      f"position {row[_POSITION]}: the columns disagree with the envelope")
                if isinstance(done, str):  # as the careful path: the catalogue changed since it was logged
                    unapplied.append((*_META(row), done))
                    continue
                envelope, event = done
                try:
                    view.apply(session, envelope, event, derive=False)
                except Exception as exc:  # the main process replays this window the careful way
                    return FoldFailed(rows[0][_POSITION], prev_hash, rows[-1][_POSITION],
                                      f"{type(exc).__name__}: {exc}")
                applied += 1
        derive_all(cache)
        window = FoldedWindow(
            rows[0][_POSITION], prev_hash, rows[-1][_POSITION], rows[-1][_HASH], len(rows), applied, unapplied,
            new_rows=new_rows(cache),
            changed_rows={model.__tablename__: params for model, params in view.changed_rows(cache).items()},
            log_rows=list(rows) if self.copy_log else None,
        )
        for updateid in touched:
            self.written_in[updateid] = self.windows
        self._keep(touched)
        return window

    def _know(self, session: Session, touched: dict[str, None]) -> None:
        """Tell the cache about each update of the window: kept in memory, new, or to be read back."""
        back = [u for u in touched if u not in self.kept and u in self.written_in]
        if back:
            self.committed.wait_for(max(self.written_in[u] for u in back))
        for updateid in touched:
            if updateid in self.kept:
                continue
            if updateid in self.written_in:
                view.load_update(session, updateid)
            else:
                view.mark_new_update(session, updateid)

    def _keep(self, touched: dict[str, None]) -> None:
        """Keep the rows of the window's updates still in progress, as written; let the others go."""
        cache = self.cache
        updates = cache.rows.get(UpdateRow, {})
        kept = {u for u in touched if (u,) in updates and updates[(u,)].completed_at is None}
        fresh = view.RowCache(plain_updates=True)
        for model, rows in cache.rows.items():
            names = [c.name for c in model.__table__.columns]
            for key, row in rows.items():
                if key[0] not in kept:
                    continue
                if type(row) is view.NewRow:  # written as new by this window: from now on it is updated
                    row.__class__ = view.LoadedRow
                    row.__dict__["_as_read"] = {n: row.__dict__[n] for n in names}
                fresh.remember(model, key, row)
                fresh.loaded_rows.setdefault(model, []).append(row)
        fresh.scopes = {scope for scope in cache.scopes if scope[1][0] in kept}
        self.cache, self.kept = fresh, kept


def derive_all(cache: view.RowCache) -> None:
    """Each update's counts, stage and status, from its rows in the cache (all of them are there)."""
    by_update: dict[str, dict[type[Any], list[Any]]] = {}
    for model in VIEW_TABLES:
        if model is UpdateRow:
            continue
        for key, row in cache.rows.get(model, {}).items():
            by_update.setdefault(key[0], {}).setdefault(model, []).append(row)
    for (updateid,), update in cache.rows.get(UpdateRow, {}).items():
        view.refresh_from_rows(update, by_update.get(updateid, {}))


def new_rows(cache: view.RowCache) -> dict[str, list[tuple[Any, ...]]]:
    """The cache's :class:`projections.view.NewRow` s as values in column order, by table (then let go)."""
    out: dict[str, list[tuple[Any, ...]]] = {}
    for model, rows in cache.new.items():
        if rows:
            out[model.__table__.name] = view.new_row_values(model, rows)
    cache.new = {}
    return out


def table_model(name: str) -> Any:
    """The view model of a table name in a :class:`FoldedWindow`."""
    return _TABLES[name]


def known_updates(target: Engine) -> set[str]:
    """The updates the target holds already (a reader started part-way through a replay reads them back)."""
    with Session(target) as session:
        return set(session.scalars(select(UpdateRow.updateid)))
