"""Reading the log for a replay: the rows, their hash links checked, their events decoded.

:func:`read_chunks` reads the source in chunks, checking each row's link in the hash chain (a
long replay calls it in its reader process, :mod:`projections.replay_process`); :func:`decode_row`
decodes a row's event just before it is applied, while its text is at hand.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import DateTime, Dialect, select
from sqlalchemy.orm import Session

from bus.envelope import Envelope
from bus.events import Event
from bus.registry import DEFAULT_REGISTRY
from projections import log as event_log
from projections.models import GENESIS_HASH, LoggedEvent, as_utc

log = logging.getLogger(__name__)

LOG_COLUMNS: tuple[str, ...] = tuple(c.name for c in LoggedEvent.__table__.columns)
"""The order of a source row's values."""

_POSITION = LOG_COLUMNS.index("position")
_HASH = LOG_COLUMNS.index("hash")
_ENVELOPE = LOG_COLUMNS.index("envelope")
_CHAIN = [LOG_COLUMNS.index(n) for n in (
    "position", "event_id", "type", "updateid", "prev_hash", "hash", "envelope", "publisher")]

CHUNK = 2_000
"""Rows per chunk sent by the reader process (≈ 3 MB pickled)."""

Decoded = tuple[Envelope, Event] | str
"""A row's envelope and (newest) event, or why it cannot be decoded ("cannot be decoded: …")."""


@dataclass
class Chunk:
    """Consecutive log rows that chain on from the previous chunk's (each event is decoded as it is applied).

    ``broken``: (position, reason) of the row after the last one, which does not chain on (or is
    missing): the last chunk of a broken log has it.
    """

    rows: list[tuple[Any, ...]]
    broken: tuple[int, str] | None = None


def decode_row(envelope_text: str) -> Decoded:
    """The row's envelope and event, validated as the live consumer validated them, or why not."""
    try:
        envelope = Envelope.from_bytes(envelope_text.encode("utf-8"))
        return envelope, DEFAULT_REGISTRY.decode(envelope)
    except ValueError as exc:  # EnvelopeError and the registry's errors: the catalogue changed since
        return f"cannot be decoded: {exc}"


class LogReader:
    """Reads the source's log rows, values in :data:`LOG_COLUMNS` order.

    From SQLite into SQLite (``stored``) the values are read and written as stored (times as
    SQLAlchemy's text), so they are copied verbatim without being parsed and formatted again;
    otherwise as Python values (times in UTC). :meth:`values` gives a row's Python values either way.
    """

    def __init__(self, source_dialect: Dialect, target_dialect_name: str) -> None:
        self.dialect = source_dialect
        self.stored = source_dialect.name == "sqlite" and target_dialect_name == "sqlite"
        table = LoggedEvent.__table__
        self.columns = [table.c[name] for name in LOG_COLUMNS]
        self.times = [i for i, c in enumerate(self.columns) if isinstance(c.type, DateTime)]
        self.parse = [c.type.dialect_impl(source_dialect).result_processor(source_dialect, None)
                      for c in self.columns]

    def read(self, session: Session, after: int, end: int, limit: int) -> list[tuple[Any, ...]]:
        table = LoggedEvent.__table__
        query = (select(*self.columns).where(table.c.position > after, table.c.position <= end)
                 .order_by(table.c.position).limit(limit))
        if self.stored:  # the same SELECT, without SQLAlchemy's processing of each value
            compiled = query.compile(dialect=self.dialect, compile_kwargs={"literal_binds": True})
            return [tuple(row) for row in session.connection().exec_driver_sql(str(compiled))]
        return [utc_at(row, self.times) for row in session.execute(query)]

    def values(self, row: Sequence[Any]) -> dict[str, Any]:
        if self.stored:
            row = tuple(p(v) if p is not None and v is not None else v for p, v in zip(self.parse, row, strict=True))
        return dict(zip(LOG_COLUMNS, utc_at(row, self.times), strict=True))


def utc_at(row: Sequence[Any], indexes: list[int]) -> tuple[Any, ...]:
    """``row`` with the values at ``indexes`` (its times) in UTC."""
    values = list(row)
    for i in indexes:
        if isinstance(values[i], datetime):  # SQLite hands back naive UTC; PostgreSQL in its session's zone
            values[i] = as_utc(values[i])
    return tuple(values)


def read_chunks(session: Session, reader: LogReader, end: int, *, position: int = 0,
                prev_hash: str = GENESIS_HASH, chunk: int = CHUNK, columns: bool = True) -> Iterator[Chunk]:
    """The log after ``position`` (whose hash is ``prev_hash``) up to ``end``, its links checked, in chunks.

    ``columns=False``: whether each row's id, type and update columns agree with its envelope is
    left to the caller, which decodes it anyway (:func:`projections.log.row_problem`).

    Stops after the chunk that ends before a row that does not chain on, or before missing rows.
    """
    while position < end:
        rows = reader.read(session, position, end, chunk)
        if not rows:  # the head promised rows that are not there
            yield Chunk([], (position + 1, "rows are missing"))
            return
        broken: tuple[int, str] | None = None
        for index, row in enumerate(rows):
            chain = event_log.ChainRow(*(row[i] for i in _CHAIN))
            problem = event_log.row_problem(chain, position + 1, prev_hash, columns=columns)
            if problem:
                rows, broken = rows[:index], (row[_POSITION], problem)
                break
            position, prev_hash = row[_POSITION], row[_HASH]
        yield Chunk(rows, broken)
        if broken is not None:
            return


def windows(chunks: Iterator[Chunk], first: int, window: int) -> Iterator[list[tuple[Any, ...]] | tuple[int, str]]:
    """The chunks' rows in windows, ``first`` rows at first, growing by half up to ``window`` (so a
    reader process hands its writer a window soon after the start); then (position, reason) if the log
    breaks."""
    rows: list[tuple[Any, ...]] = []
    size = first
    for part in chunks:
        rows += part.rows
        while len(rows) >= size:
            yield rows[:size]
            del rows[:size]
            size = min(window, size * 3 // 2 + 1)
        if part.broken is not None:
            if rows:
                yield rows
            yield part.broken
            return
    if rows:
        yield rows
