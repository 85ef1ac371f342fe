"""Rebuilding the status view from the log, in another database: the log copied, every event folded again.

The source's log is read in chunks and walked (:class:`projections.log.Chain`: each row must link
to the one before), and replayed in windows of ``window`` events, each one transaction on the
target: the log rows copied verbatim (so the target's log verifies and the dashboard shows each
update's raw events), each event decoded as the live consumer decoded it and folded with the live
projection's fold (:func:`projections.view.fold`), and what changed written
(:func:`projections.view.write`). The rows of the updates still in progress stay in memory for the
next window; the others are let go (read back from the target if a later event touches them), so
what is held is bounded by the window, not by the log.

A window that fails (an event's reducer raises, the target refuses a row) is rolled back and
narrowed by halves (:func:`projections.view.fold.narrow`), as the live ingest narrows a batch: a
single event whose reducer fails is copied and left unapplied, as the live projection left it.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from bus.contract.envelope import Envelope
from bus.contract.events import Event
from bus.contract.registry import DEFAULT_REGISTRY
from domain.db import make_engine, upgrade
from projections import log as event_log
from projections import view
from projections.log import AT, Chain, ChainRow
from projections.models import GENESIS_HASH, AppliedEvent, LoggedEvent, UpdateRow
from projections.rebuild.target import (
    RebuildError,
    prepare_target,
    rebuild_end,
    same_database,
    settle,
    target_engine,
)
from projections.view.bulk_insert import insert_rows
from projections.view.fold import narrow

WINDOW = 10_000
"""Events folded in memory per transaction: bounds the memory a rebuild holds."""

Progress = Callable[[int, int], None]
"""Called with (events done, events in all) as a rebuild goes on."""

_POSITION, _HASH, _PREV = AT["position"], AT["hash"], AT["prev_hash"]
_ID, _TYPE, _UPDATEID, _ENVELOPE = AT["event_id"], AT["type"], AT["updateid"], AT["envelope"]


class SourceLogBroken(RebuildError):
    def __init__(self, position: int, reason: str, replayed: int) -> None:
        super().__init__(
            f"the source log is broken at position {position}: {reason}; "
            f"the target holds the view of the {replayed} events before it"
        )
        self.position, self.reason, self.replayed = position, reason, replayed


@dataclass(frozen=True)
class Unapplied:
    """A logged event the view could not take (the live projection could not either)."""

    position: int
    event_id: str
    type: str
    reason: str


@dataclass
class RebuildResult:
    events: int = 0
    applied: int = 0
    last_position: int = 0
    last_hash: str = GENESIS_HASH
    unapplied: list[Unapplied] = field(default_factory=list)


class _Broken(Exception):
    """A row's columns disagree with its envelope: the log is broken there."""

    def __init__(self, position: int, reason: str) -> None:
        super().__init__(reason)
        self.position, self.reason = position, reason


def rebuild(source_url: str, target_url: str, *, until_position: int | None = None,
            until_time: datetime | None = None, force: bool = False, window: int = WINDOW,
            progress: Progress | None = None) -> RebuildResult:
    """Rebuild the status view of ``source_url``'s log in ``target_url`` (migrated first).

    Only the log up to ``until_position``, and up to the last event received at or before
    ``until_time``, is replayed. A target holding projection data is refused unless ``force``,
    which empties its projection tables first. ``window`` events are folded per transaction.
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
            stored = source.dialect.name == target.dialect.name == "sqlite"
            return _Rebuild(target, stored, end, progress).run(event_log.read_rows(session, up_to=end, stored=stored),
                                                               window)
    finally:
        if collecting:
            gc.enable()
        settle(target)
        source.dispose()
        target.dispose()


class _Rebuild:
    def __init__(self, target: Engine, stored: bool, end: int, progress: Progress | None) -> None:
        self.target, self.stored, self.end, self.progress = target, stored, end, progress
        self.memory = view.MemoryRows()
        self.result = RebuildResult()

    def run(self, rows: Iterator[tuple[Any, ...]], window: int) -> RebuildResult:
        if self.progress:
            self.progress(0, self.end)
        chain = Chain()
        pending: list[tuple[Any, ...]] = []
        broken: tuple[int, str] | None = None
        for row in rows:
            # the columns are compared with the envelope as it is decoded (a second JSON parse costs)
            problem = chain.follow(ChainRow.of(row), columns=False)
            if problem:
                broken = (row[_POSITION], problem)
                break
            pending.append(row)
            if len(pending) >= window:
                self._windows(pending)
                pending = []
        self._windows(pending)
        if broken is None and chain.position < self.end:
            broken = (chain.position + 1, "rows are missing")
        if broken is not None:
            raise SourceLogBroken(broken[0], broken[1], self.result.events)
        return self.result

    def _windows(self, rows: Sequence[tuple[Any, ...]]) -> None:
        try:
            narrow(rows, self._window)
        except _Broken as exc:
            raise SourceLogBroken(exc.position, exc.reason, self.result.events) from None

    def _window(self, rows: Sequence[tuple[Any, ...]]) -> list[None]:
        """Copy and fold ``rows`` in one transaction; raises (having kept nothing) if any of it fails.

        A single event the target refuses the view rows of is copied and left unapplied, as one whose
        reducer raises is (:meth:`_transaction`).
        """
        try:
            done = self._transaction(rows)
        except Exception as exc:
            self.memory = view.MemoryRows()  # its rows may be half-folded: read them back from the target
            if len(rows) > 1 or isinstance(exc, _Broken):
                raise
            done = self._transaction(rows, refused=f"{type(exc).__name__}: {exc}")
        result = self.result
        result.events += len(rows)
        result.applied += done[0]
        result.unapplied.extend(done[1])
        result.last_position, result.last_hash = rows[-1][_POSITION], rows[-1][_HASH]
        if self.progress:
            self.progress(result.events, self.end)
        return [None]

    def _transaction(self, rows: Sequence[tuple[Any, ...]], refused: str = "") -> tuple[int, list[Unapplied]]:
        """``refused``: the reason the target refused the single row's view rows (then none are folded)."""
        memory = self.memory
        with Session(self.target) as session, session.begin():
            head = event_log.lock_head(session)
            if (head.position + 1, head.hash) != (rows[0][_POSITION], rows[0][_PREV]):
                raise ValueError(f"the window from {rows[0][_POSITION]} does not follow the target's head")
            connection = session.connection()
            insert_rows(connection, LoggedEvent.__table__, rows, stored=self.stored)
            to_fold = [] if refused else rows
            view.load(connection, memory, dict.fromkeys(row[_UPDATEID] for row in to_fold))
            unapplied = [Unapplied(rows[0][_POSITION], rows[0][_ID], rows[0][_TYPE], refused)] if refused else []
            applied: list[tuple[str, int, str]] = []
            try:
                view.fold(memory, self._events(to_fold, applied, unapplied))
            except view.ReducerFailed as failed:
                if len(rows) > 1:
                    raise
                row = rows[0]
                unapplied.append(Unapplied(row[_POSITION], row[_ID], row[_TYPE],
                                           f"{type(failed.error).__name__}: {failed.error}"))
                applied.clear()
                memory.updates.pop(row[_UPDATEID], None)  # half-folded: read it back when next touched
                memory.touched = {}
            insert_rows(connection, AppliedEvent.__table__, applied)
            touched = list(memory.touched)
            view.write(connection, memory.changes())
            head.position, head.hash = rows[-1][_POSITION], rows[-1][_HASH]
            head.version += 1
            event_log.store_head(session, head)
        # the window's updates still in progress are likely in the next one too; the rest are let go
        memory.keep_only(u for u in touched if memory.rows_of(u).tables[UpdateRow][(u,)].completed_at is None)
        return len(applied), unapplied

    @staticmethod
    def _events(rows: Sequence[tuple[Any, ...]], applied: list[tuple[str, int, str]],
                unapplied: list[Unapplied]) -> Iterator[tuple[Envelope, Event]]:
        """Each row's envelope and event, decoded as the live consumer decoded them; raises :class:`_Broken` at a
        row whose columns disagree with its envelope."""
        for row in rows:
            try:
                envelope = Envelope.from_bytes(row[_ENVELOPE].encode("utf-8"))
                event = DEFAULT_REGISTRY.decode(envelope)
            except ValueError as exc:  # EnvelopeError and the registry's errors: the catalogue changed since
                reason = event_log.columns_problem(ChainRow.of(row))
                if reason:
                    raise _Broken(row[_POSITION], reason) from None
                unapplied.append(Unapplied(row[_POSITION], row[_ID], row[_TYPE], f"cannot be decoded: {exc}"))
                continue
            if (envelope.id, envelope.type, envelope.updateid) != (row[_ID], row[_TYPE], row[_UPDATEID]):
                raise _Broken(row[_POSITION], event_log.columns_problem(ChainRow.of(row)))
            applied.append((envelope.id, row[_POSITION], envelope.updateid))
            yield envelope, event
