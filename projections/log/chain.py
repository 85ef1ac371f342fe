"""The log's hash chain: how a row's hash is made, and the one walk that checks rows link up.

Each row's ``hash`` is ``sha256(prev_hash_bytes + canonical_envelope_bytes [+ b"\\x00" +
publisher])`` in hex, where ``prev_hash_bytes`` are the 32 raw bytes of the previous row's hash
(32 zero bytes before the first row), the envelope bytes are
:meth:`bus.contract.envelope.Envelope.to_bytes`, and ``publisher`` is the UTF-8 broker user that
RabbitMQ verified for the delivery (``Incoming.publisher``; empty if the publisher set none).
Rows logged before publishers were recorded have ``publisher`` NULL and their hash covers
the envelope alone, so they verify as they were written; every row logged since carries a
publisher (possibly empty), covered by its hash. Canonical JSON never holds a raw NUL byte,
so the separator makes the two forms unambiguous (docs/audit.md). Changing, inserting or
removing any row breaks the chain at that row.

:class:`Chain` is the walk: verifying the log, verifying an export, re-publishing a slice and
rebuilding the view all check rows through it, and the appender advances it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from projections.models import GENESIS_HASH, LoggedEvent

PUBLISHER_SEPARATOR = b"\x00"

LOG_COLUMNS: tuple[str, ...] = tuple(c.name for c in LoggedEvent.__table__.columns)
"""The log's columns in table order: a log row read as a tuple has its values in this order."""

CHAIN_COLUMNS = ("position", "event_id", "type", "updateid", "prev_hash", "hash", "envelope", "publisher")
"""The columns a :class:`ChainRow` holds, in its field order."""

AT = {name: LOG_COLUMNS.index(name) for name in LOG_COLUMNS}
"""Each column's index in a log row tuple."""


def chain_hash(prev_hash: str, canonical: bytes, publisher: str | None = None) -> str:
    """The hash of a log row whose predecessor's hash is ``prev_hash`` (hex) and whose envelope is ``canonical``.

    ``publisher`` None: a row logged before publishers were recorded (the envelope alone is hashed).
    """
    digest = hashlib.sha256(bytes.fromhex(prev_hash) + canonical)
    if publisher is not None:
        digest.update(PUBLISHER_SEPARATOR + publisher.encode("utf-8"))
    return digest.hexdigest()


@dataclass(frozen=True)
class ChainRow:
    """What verification needs of a log row (from the table, or from an export file)."""

    position: int
    event_id: str
    type: str
    updateid: str
    prev_hash: str
    hash: str
    envelope: str
    publisher: str | None = None
    """The verified publisher, covered by ``hash``; None for a row logged before publishers were recorded."""

    @classmethod
    def of(cls, values: tuple[object, ...]) -> ChainRow:
        """The chain columns of a log row tuple (values in :data:`LOG_COLUMNS` order)."""
        return cls(*(values[AT[name]] for name in CHAIN_COLUMNS))  # type: ignore[arg-type]


@dataclass
class Chain:
    """Where a walk along the log stands: the last position checked and its hash."""

    position: int = 0
    hash: str = GENESIS_HASH

    def follow(self, row: ChainRow, *, gaps: bool = False, columns: bool = True) -> str:
        """Why ``row`` does not come next ("" if it does; then the walk stands on it).

        ``gaps``: a filtered slice, where a row whose predecessor is not in it is checked against
        its own ``prev_hash`` (its own hash and columns only). ``columns=False`` leaves out whether
        the id, type and update columns agree with the envelope: a caller that decodes the
        envelope anyway compares them itself (:func:`columns_problem` otherwise).
        """
        expected = self.position + 1
        if gaps and row.position > expected:
            problem = row_problem(row, row.position, row.prev_hash, columns=columns)
        else:
            problem = row_problem(row, expected, self.hash, columns=columns)
        if not problem:
            self.position, self.hash = row.position, row.hash
        return problem


def row_problem(row: ChainRow, expected_position: int, prev_hash: str, *, columns: bool = True) -> str:
    """Why ``row`` does not follow a row at ``expected_position - 1`` whose hash is ``prev_hash`` ("" if it does)."""
    if row.position != expected_position:
        return f"expected position {expected_position} next, found {row.position}: rows are missing"
    if row.prev_hash != prev_hash:
        return "prev_hash does not match the previous row's hash"
    if chain_hash(row.prev_hash, row.envelope.encode("utf-8"), row.publisher) != row.hash:
        return "hash does not match the stored envelope and publisher: the envelope, publisher or hash was altered"
    return columns_problem(row) if columns else ""


def columns_problem(row: ChainRow) -> str:
    """Why the row's id, type and update columns disagree with its stored envelope ("" if they agree)."""
    try:
        stored = json.loads(row.envelope)
    except ValueError:
        return "the stored envelope is not JSON"
    if not isinstance(stored, dict):
        return "the stored envelope is not a JSON object"
    for column, value in (("event_id", row.event_id), ("type", row.type), ("updateid", row.updateid)):
        key = "id" if column == "event_id" else column
        if stored.get(key) != value:
            return f"column {column} ({value!r}) disagrees with the envelope ({stored.get(key)!r})"
    return ""
