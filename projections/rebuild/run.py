"""Rebuilding the status view from the log, in another database: the log copied, every event folded again.

The source's log is read in chunks and walked (:class:`projections.log.Chain`: each row must link
to the one before), and replayed in windows of ``window`` events, each one transaction on the
target: the log rows copied verbatim (so the target's log verifies and the dashboard shows each
update's raw events), each event decoded as the live consumer decoded it and folded with the live
projection's fold, and what changed written (:mod:`projections.rebuild.window`). The rows of the
updates still in progress stay in memory for the next window; the others are let go (read back
from the target if a later event touches them), so what is held is bounded by the window, not by
the log.

A long rebuild (:data:`READER_FROM` events or more) reads, walks and folds in a reader process
while this one writes (:mod:`projections.rebuild.reader`): the same functions, on two cores.

A window that fails (an event's reducer raises, the target refuses a row) is rolled back and
narrowed by halves (:func:`projections.view.fold.narrow`) in this process, as the live ingest
narrows a batch: a single event whose reducer fails is copied and left unapplied, as the live
projection left it; a reader process then goes on after it.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine
from sqlalchemy.orm import Session

from domain.db import make_engine, upgrade
from projections import log as event_log
from projections import view
from projections.log import AT, Chain
from projections.models import GENESIS_HASH
from projections.rebuild.reader import FoldFailed, ReaderProcess
from projections.rebuild.target import (
    RebuildError,
    prepare_target,
    rebuild_end,
    same_database,
    settle,
    source_attached,
    target_engine,
)
from projections.rebuild.window import Broken, Folded, Unapplied, fold_window, windows, write_window
from projections.view.fold import narrow

log = logging.getLogger(__name__)

WINDOW = 10_000
"""Events folded in memory per transaction: bounds the memory a rebuild holds."""

READER_FROM = 50_000
"""A rebuild of this many events or more folds in a reader process (starting one costs ≈ 1 s)."""

Progress = Callable[[int, int], None]
"""Called with (events done, events in all) as a rebuild goes on."""

_POSITION, _ID, _TYPE, _UPDATEID = AT["position"], AT["event_id"], AT["type"], AT["updateid"]

__all__ = ["READER_FROM", "WINDOW", "Progress", "RebuildResult", "SourceLogBroken", "Unapplied", "rebuild"]


class SourceLogBroken(RebuildError):
    def __init__(self, position: int, reason: str, replayed: int) -> None:
        super().__init__(
            f"the source log is broken at position {position}: {reason}; "
            f"the target holds the view of the {replayed} events before it"
        )
        self.position, self.reason, self.replayed = position, reason, replayed


@dataclass
class RebuildResult:
    events: int = 0
    applied: int = 0
    last_position: int = 0
    last_hash: str = GENESIS_HASH
    unapplied: list[Unapplied] = field(default_factory=list)
    reader_peak_rss_kib: int = 0
    """The reader process's peak resident memory (0: the rebuild ran in one process)."""


def rebuild(source_url: str, target_url: str, *, until_position: int | None = None,
            until_time: datetime | None = None, force: bool = False, window: int = WINDOW,
            progress: Progress | None = None, reader: bool | None = None) -> RebuildResult:
    """Rebuild the status view of ``source_url``'s log in ``target_url`` (migrated first).

    Only the log up to ``until_position``, and up to the last event received at or before
    ``until_time``, is replayed. A target holding projection data is refused unless ``force``,
    which empties its projection tables first. ``window`` events are folded per transaction;
    ``reader``: fold in a reader process (None: if there are :data:`READER_FROM` events or more).
    """
    if window < 1:
        raise RebuildError(f"a window holds at least one event, not {window}")
    if same_database(source_url, target_url):
        raise RebuildError("the target is the source database")
    upgrade(target_url, "projection")
    source, target = make_engine(source_url), target_engine(target_url)
    # What a window holds (millions of objects) forms no cycles: the collector's passes over it
    # would cost as much as decoding does.
    collecting = gc.isenabled()
    gc.disable()
    try:
        prepare_target(target, force=force)
        with Session(source) as session:
            end = rebuild_end(session, until_position=until_position, until_time=until_time)
            job = _Rebuild(session, source, target, end, window, progress)
            if end >= READER_FROM if reader is None else reader:
                return job.with_reader(source_url, target_url)
            return job.in_process()
    finally:
        if collecting:
            gc.enable()
        settle(target)
        source.dispose()
        target.dispose()


class _Rebuild:
    def __init__(self, source: Session, source_engine: Engine, target: Engine, end: int, window: int,
                 progress: Progress | None) -> None:
        self.source, self.source_engine, self.target, self.end, self.window = source, source_engine, target, end, window
        self.stored = source_engine.dialect.name == target.dialect.name == "sqlite"
        self.progress = progress
        self.memory = view.MemoryRows()
        self.result = RebuildResult()

    def in_process(self) -> RebuildResult:
        """Read, walk, fold and write every window here."""
        self._started()
        result = self.result
        rows = event_log.read_rows(self.source, up_to=self.end, stored=self.stored)
        try:
            for rows_of_window in windows(rows, Chain(), self.window, self.end):
                self._narrowed(rows_of_window)
        except Broken as broken:
            raise SourceLogBroken(broken.position, broken.reason, result.events) from None
        return result

    def with_reader(self, source_url: str, target_url: str) -> RebuildResult:
        """Read, walk and fold in a reader process, write here; a window it cannot fold is narrowed here, and
        a new reader goes on after it. SQLite to SQLite, the log rows are copied by SQL from the source
        attached here: they need not pass through the reader's pickles."""
        result = self.result
        self._started()
        with self.target.connect() as connection, source_attached(connection, self.source_engine,
                                                                  self.target) as by_sql:
            while result.last_position < self.end:
                with ReaderProcess(source_url, target_url, after=result.last_position, prev_hash=result.last_hash,
                                   end=self.end, size=self.window, send_rows=not by_sql) as reader:
                    rows = self._write_from(reader, connection)
                result.reader_peak_rss_kib = max(result.reader_peak_rss_kib, reader.peak_rss_kib)
                log.info("rebuild: waited %.1f s for the reader process", reader.waited)
                if rows is None:
                    break
                self.memory = view.MemoryRows()  # the reader's rows are gone: read back from the target
                self._narrowed(rows)
        return result

    def _write_from(self, reader: ReaderProcess, connection: Connection) -> Sequence[tuple[Any, ...]] | None:
        """Write the reader's windows; the rows of a window it could not fold or the target refused (None: it
        went to the end)."""
        for message in reader:
            if isinstance(message, Broken):
                raise SourceLogBroken(message.position, message.reason, self.result.events)
            if isinstance(message, FoldFailed):
                log.info("rebuild: %s; narrowing that window down here", message.reason)
                return message.rows
            try:
                self._commit(message, connection)
            except Exception as exc:
                log.info("rebuild: the target refused a window (%r); narrowing it down here", exc)
                return message.rows if message.rows is not None else self._read_again(message)
            reader.committed()
        return None

    def _read_again(self, folded: Folded) -> list[tuple[Any, ...]]:
        """The rows of a window the reader walked and sent without them, read and walked again."""
        rows = event_log.read_rows(self.source, after=folded.first - 1, up_to=folded.last, stored=self.stored)
        return [row for window in windows(rows, Chain(folded.first - 1, folded.prev_hash), folded.events,
                                          folded.last) for row in window]

    def _started(self) -> None:
        if self.progress:
            self.progress(0, self.end)

    def _narrowed(self, rows: Sequence[tuple[Any, ...]]) -> None:
        try:
            narrow(rows, self._window)
        except Broken as broken:
            raise SourceLogBroken(broken.position, broken.reason, self.result.events) from None

    def _window(self, rows: Sequence[tuple[Any, ...]]) -> list[None]:
        """Copy and fold ``rows`` in one transaction; raises (having kept nothing) if any of it fails.

        A single event the target refuses the view rows of is copied and left unapplied, as one whose
        reducer raises is (:meth:`_fold`).
        """
        try:
            self._commit(self._fold(rows))
        except Exception as exc:
            self.memory = view.MemoryRows()  # its rows may be half-folded: read them back from the target
            if len(rows) > 1 or isinstance(exc, Broken):
                raise
            row = rows[0]
            self._commit(Folded.of(rows, [Unapplied(row[_POSITION], row[_ID], row[_TYPE],
                                                    f"{type(exc).__name__}: {exc}")]))
        return [None]

    def _fold(self, rows: Sequence[tuple[Any, ...]]) -> Folded:
        """``rows`` folded on this process's rows (read back from the target where not held)."""
        memory = self.memory
        try:
            with self.target.connect() as connection:
                def load(held: view.MemoryRows, updateids: Iterable[str]) -> None:
                    view.load(connection, held, updateids)

                return fold_window(memory, rows, load)
        except view.ReducerFailed as failed:
            if len(rows) > 1:
                raise
            row = rows[0]
            memory.updates.pop(row[_UPDATEID], None)  # half-folded: read it back when next touched
            memory.touched = {}
            return Folded.of(rows, [Unapplied(row[_POSITION], row[_ID], row[_TYPE],
                                              f"{type(failed.error).__name__}: {failed.error}")])

    def _commit(self, folded: Folded, connection: Connection | None = None) -> None:
        """Write ``folded`` and advance the target's head, in one transaction (on ``connection`` if given)."""
        with Session(connection or self.target) as session, session.begin():
            head = event_log.lock_head(session)
            if (head.position + 1, head.hash) != (folded.first, folded.prev_hash):
                raise ValueError(f"the window from {folded.first} does not follow the target's head")
            write_window(session.connection(), folded, stored=self.stored)
            head.position, head.hash = folded.last, folded.last_hash
            head.version += 1
            event_log.store_head(session, head)
        result = self.result
        result.events += folded.events
        result.applied += len(folded.applied)
        result.unapplied.extend(folded.unapplied)
        result.last_position, result.last_hash = folded.last, folded.last_hash
        if self.progress:
            self.progress(result.events, self.end)
