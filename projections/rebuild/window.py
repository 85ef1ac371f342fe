"""One window of the log: walked, folded into view rows, written; the pieces both ways of rebuilding share.

:func:`windows` walks the source's rows along the hash chain and cuts them into windows;
:func:`fold_window` decodes a window's events as the live consumer decoded them and folds them
with the live projection's fold (:func:`projections.view.fold`) into :class:`Folded`: plain
tuples, what the target is to be given; :func:`write_window` writes that in the caller's
transaction. A rebuild in one process does all three in turn; a long one folds in a reader
process and writes in the main one (:mod:`projections.rebuild.reader`): the same functions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection

from bus.contract.envelope import Envelope
from bus.contract.events import Event
from bus.contract.registry import DEFAULT_REGISTRY
from projections import log as event_log
from projections import view
from projections.log import AT, Chain, ChainRow
from projections.models import AppliedEvent, LoggedEvent, UpdateRow
from projections.rebuild.target import SOURCE_SCHEMA
from projections.view.bulk_insert import insert_rows
from projections.view.rows import Changes

_POSITION, _HASH, _PREV = AT["position"], AT["hash"], AT["prev_hash"]
_ID, _TYPE, _UPDATEID, _ENVELOPE = AT["event_id"], AT["type"], AT["updateid"], AT["envelope"]

Load = Callable[[view.MemoryRows, Iterable[str]], None]
"""Hold every row of the given updates (read from the target, or new): :func:`projections.view.load` bound
to a connection."""


@dataclass(frozen=True)
class Unapplied:
    """A logged event the view could not take (the live projection could not either)."""

    position: int
    event_id: str
    type: str
    reason: str


class Broken(Exception):
    """The source log is broken at ``position`` (a row does not chain on, or its columns disagree with its
    envelope): the windows before it were whole."""

    def __init__(self, position: int, reason: str) -> None:
        super().__init__(reason)
        self.position, self.reason = position, reason


@dataclass
class Folded:
    """A window folded: where it lies in the log, its rows to copy, the applied events' rows, what the view
    rows became.

    Plain values only (tuples, dicts, datetimes): a reader process hands it to the writer pickled, without
    the log rows where the writer copies them from the source by SQL (``rows`` None: :func:`write_window`).
    """

    first: int
    prev_hash: str
    last: int
    last_hash: str
    rows: Sequence[tuple[Any, ...]] | None
    applied: list[tuple[str, int, str]] = field(default_factory=list)
    unapplied: list[Unapplied] = field(default_factory=list)
    changes: Changes = field(default_factory=Changes)

    @classmethod
    def of(cls, rows: Sequence[tuple[Any, ...]], unapplied: list[Unapplied] | None = None) -> Folded:
        """``rows`` (checked: they chain on), nothing folded yet (or each of them left ``unapplied``)."""
        return cls(rows[0][_POSITION], rows[0][_PREV], rows[-1][_POSITION], rows[-1][_HASH], rows,
                   unapplied=unapplied or [])

    @property
    def events(self) -> int:
        return self.last - self.first + 1


def windows(rows: Iterable[tuple[Any, ...]], chain: Chain, size: int, end: int) -> Iterator[list[tuple[Any, ...]]]:
    """``rows`` walked along ``chain`` in windows of ``size``, the last one up to ``end``; raises :class:`Broken`
    (after the window of the rows before it) at the first row that does not chain on, or if rows are missing."""
    pending: list[tuple[Any, ...]] = []
    for row in rows:
        # the columns are compared with the envelope as it is decoded (a second JSON parse costs)
        problem = chain.follow(ChainRow.of(row), columns=False)
        if problem:
            if pending:
                yield pending
            raise Broken(row[_POSITION], problem)
        pending.append(row)
        if len(pending) >= size:
            yield pending
            pending = []
    if pending:
        yield pending
    if chain.position < end:
        raise Broken(chain.position + 1, "rows are missing")


def fold_window(memory: view.MemoryRows, rows: Sequence[tuple[Any, ...]], load: Load) -> Folded:
    """Fold ``rows`` into ``memory`` (their updates loaded first) and take what changed.

    Raises :class:`projections.view.ReducerFailed` if a reducer raises (``memory`` is then half-folded:
    throw it away) and :class:`Broken` at a row whose columns disagree with its envelope. Afterwards
    ``memory`` keeps only the window's updates still in progress: they are likely in the next window too;
    the rest are let go (read back if touched again), so what is held is bounded by the window.
    """
    folded = Folded.of(rows)
    load(memory, dict.fromkeys(row[_UPDATEID] for row in rows))
    view.fold(memory, _events(rows, folded))
    touched = list(memory.touched)
    folded.changes = memory.changes()
    memory.keep_only(u for u in touched if memory.rows_of(u).tables[UpdateRow][(u,)].completed_at is None)
    return folded


def write_window(connection: Connection, folded: Folded, *, stored: bool) -> None:
    """Copy the window's log rows (``stored``: in the target's stored form already; none given: from the
    source attached to ``connection``, :func:`projections.rebuild.target.source_attached`), record the
    applied events and write the view rows, in the caller's transaction."""
    if folded.rows is None:
        copied = connection.exec_driver_sql(_copy_statement(), (folded.first, folded.last)).rowcount
        last_hash = connection.exec_driver_sql(_HASH_AT, (folded.last,)).scalar()
        if (copied, last_hash) != (folded.events, folded.last_hash):  # the source changed since it was walked
            raise ValueError(f"the source's rows {folded.first}–{folded.last} are not those the reader walked")
    else:
        insert_rows(connection, LoggedEvent.__table__, folded.rows, stored=stored)
    insert_rows(connection, AppliedEvent.__table__, folded.applied)
    view.write(connection, folded.changes)


_LOG: Any = LoggedEvent.__table__
_HASH_AT = f"SELECT hash FROM main.{_LOG.name} WHERE position = ?"  # noqa: S608 - the table's own name


def _copy_statement() -> str:
    """INSERT INTO the target's log SELECT the attached source's rows between two positions, verbatim."""
    listed = ", ".join(f'"{c.name}"' for c in _LOG.columns)
    return (f"INSERT INTO main.{_LOG.name} ({listed}) SELECT {listed} FROM {SOURCE_SCHEMA}.{_LOG.name} "  # noqa: S608
            "WHERE position BETWEEN ? AND ? ORDER BY position")


def _events(rows: Sequence[tuple[Any, ...]], folded: Folded) -> Iterator[tuple[Envelope, Event]]:
    """Each row's envelope and event, decoded as the live consumer decoded them (recorded in ``folded`` as
    applied, or unapplied if the catalogue no longer takes them); raises :class:`Broken` at a row whose
    columns disagree with its envelope."""
    for row in rows:
        try:
            envelope = Envelope.from_bytes(row[_ENVELOPE].encode("utf-8"))
            event = DEFAULT_REGISTRY.decode(envelope)
        except ValueError as exc:  # EnvelopeError and the registry's errors: the catalogue changed since
            reason = event_log.columns_problem(ChainRow.of(row))
            if reason:
                raise Broken(row[_POSITION], reason) from None
            folded.unapplied.append(Unapplied(row[_POSITION], row[_ID], row[_TYPE], f"cannot be decoded: {exc}"))
            continue
        if (envelope.id, envelope.type, envelope.updateid) != (row[_ID], row[_TYPE], row[_UPDATEID]):
            raise Broken(row[_POSITION], event_log.columns_problem(ChainRow.of(row)))
        folded.applied.append((envelope.id, row[_POSITION], envelope.updateid))
        yield envelope, event
