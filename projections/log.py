"""The append-only event log and its hash chain.

Each row's ``hash`` is ``sha256(prev_hash_bytes + canonical_envelope_bytes [+ b"\\x00" +
publisher])`` in hex, where ``prev_hash_bytes`` are the 32 raw bytes of the previous row's hash
(32 zero bytes before the first row), the envelope bytes are
:meth:`bus.envelope.Envelope.to_bytes`, and ``publisher`` is the UTF-8 broker user that
RabbitMQ verified for the delivery (``Incoming.publisher``; empty if the publisher set none).
Rows logged before publishers were recorded have ``publisher`` NULL and their hash covers
the envelope alone, so they verify as they were written; every row logged since carries a
publisher (possibly empty), covered by its hash. Canonical JSON never holds a raw NUL byte,
so the separator makes the two forms unambiguous (docs/audit.md). Changing,
inserting or removing any row breaks the chain at that row; the head row records the last
position and hash, so removing rows from the end is noticed too.

Writers call :func:`lock_head` first in their transaction: it takes the database's write
lock (SQLite) or the head row's lock (PostgreSQL), so appends are serialised and positions
are gapless and in commit order.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from bus.envelope import Envelope
from projections.models import GENESIS_HASH, LoggedEvent, LogHead

HEAD_ID = 1
_CHUNK = 1000


PUBLISHER_SEPARATOR = b"\x00"


def chain_hash(prev_hash: str, canonical: bytes, publisher: str | None = None) -> str:
    """The hash of a log row whose predecessor's hash is ``prev_hash`` (hex) and whose envelope is ``canonical``.

    ``publisher`` None: a row logged before publishers were recorded (the envelope alone is hashed).
    """
    digest = hashlib.sha256(bytes.fromhex(prev_hash) + canonical)
    if publisher is not None:
        digest.update(PUBLISHER_SEPARATOR + publisher.encode("utf-8"))
    return digest.hexdigest()


@dataclass
class Head:
    """The in-transaction view of the log's end: advanced by :func:`append` as rows are added."""

    position: int
    hash: str
    version: int

    def advance(self, row: LoggedEvent) -> None:
        self.position, self.hash = row.position, row.hash


def lock_head(session: Session) -> Head:
    """Lock the head row for the rest of the transaction (creating it if missing) and read it."""
    # A no-op UPDATE as the first statement takes the write lock before anything is read,
    # so two writers never both read the same head (SQLite would refuse the second's
    # upgrade from reader to writer; PostgreSQL waits on the row lock).
    result = session.execute(update(LogHead).where(LogHead.id == HEAD_ID).values(version=LogHead.version))
    if getattr(result, "rowcount", 0) == 0:
        session.add(LogHead(id=HEAD_ID, position=0, hash=GENESIS_HASH, version=0))
        session.flush()
    row = session.get_one(LogHead, HEAD_ID, populate_existing=True)
    return Head(position=row.position, hash=row.hash, version=row.version)


def store_head(session: Session, head: Head) -> None:
    """Write the advanced head back (same transaction as the rows it covers)."""
    session.execute(
        update(LogHead)
        .where(LogHead.id == HEAD_ID)
        .values(position=head.position, hash=head.hash, version=head.version)
    )


def find(session: Session, event_id: str) -> LoggedEvent | None:
    return session.execute(select(LoggedEvent).where(LoggedEvent.event_id == event_id)).scalar_one_or_none()


def log_row(head: Head, envelope: Envelope, received_at: datetime, publisher: str = "") -> dict[str, Any]:
    """The column values of ``envelope``'s log row after ``head`` (for a multi-row INSERT).

    ``publisher`` is the broker-verified user of the delivery (``Incoming.publisher``).
    """
    canonical = envelope.to_bytes()
    publisher = publisher.replace("\x00", "\ufffd")  # as the column will hold it: what is hashed is what is kept
    return {
        "position": head.position + 1,
        "event_id": envelope.id,
        "type": envelope.type,
        "updateid": envelope.updateid,
        "project": envelope.project,
        "area": envelope.area,
        "source": envelope.source.replace("\x00", "\ufffd"),  # PostgreSQL text cannot hold NUL
        "sequence": envelope.sequence,
        "event_time": envelope.time.astimezone(UTC),  # SQLite keeps wall-clock text: store UTC only
        "received_at": received_at.astimezone(UTC),
        "envelope": canonical.decode("utf-8"),
        "prev_hash": head.hash,
        "hash": chain_hash(head.hash, canonical, publisher),
        "publisher": publisher,
    }


def append(
    session: Session, head: Head, envelope: Envelope, received_at: datetime, publisher: str = ""
) -> LoggedEvent:
    """Add ``envelope`` after ``head`` (the caller checked it is not logged yet).

    ``head`` is not changed: the caller advances it (:meth:`Head.advance`) once the
    savepoint holding this row is released, so a rolled-back row leaves no gap.
    """
    row = LoggedEvent(**log_row(head, envelope, received_at, publisher))
    session.add(row)
    session.flush()
    return row


# --- verification -------------------------------------------------------------------


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


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    count: int
    """Rows that verified (all of them when ``ok``; those before the broken one otherwise)."""
    broken_position: int | None = None
    reason: str = ""
    publishers: dict[str | None, int] = field(default_factory=dict)
    """Verified rows per recorded publisher (None: logged before publishers were recorded)."""

    def describe(self) -> str:
        if self.ok:
            return f"all {self.count} events verify"
        return f"broken at position {self.broken_position}: {self.reason} ({self.count} events before it verify)"


def verify_rows(rows: Iterable[ChainRow], *, head: tuple[int, str] | None = None) -> VerifyResult:
    """Walk ``rows`` in position order; report the first row that does not chain from its predecessor.

    A row is broken when its position is not the next one, its ``prev_hash`` is not the
    previous row's hash, its ``hash`` is not the hash of its stored envelope, or its
    indexed columns disagree with the envelope. ``head`` (position, hash), if given, must
    match the last row: rows removed from the end show up there.
    """
    prev_hash = GENESIS_HASH
    expected_position = 1
    count = 0
    publishers: dict[str | None, int] = {}
    for row in rows:
        problem = row_problem(row, expected_position, prev_hash)
        if problem:
            return VerifyResult(False, count, row.position, problem, publishers)
        prev_hash = row.hash
        expected_position += 1
        count += 1
        publishers[row.publisher] = publishers.get(row.publisher, 0) + 1
    if head is not None:
        head_position, head_hash = head
        if head_position != count or head_hash != prev_hash:
            return VerifyResult(
                False, count, count + 1,
                f"the head records {head_position} events ending in {head_hash[:12]}…, "
                f"but the log holds {count} ending in {prev_hash[:12]}…: rows were removed from the end",
                publishers,
            )
    return VerifyResult(True, count, publishers=publishers)


def describe_publishers(publishers: dict[str | None, int]) -> str:
    """One line saying who published the verified events, as the broker verified them."""
    named = sorted((user, n) for user, n in publishers.items() if user)
    parts = [f"{user} ×{n}" for user, n in named]
    if publishers.get(""):
        parts.append(f"no user_id set ×{publishers['']}")
    if publishers.get(None):
        parts.append(f"not recorded (logged before publishers were) ×{publishers[None]}")
    return "publishers (broker-verified): " + ("; ".join(parts) or "none")


def row_problem(row: ChainRow, expected_position: int, prev_hash: str, *, columns: bool = True) -> str:
    """Why ``row`` does not follow a row at ``expected_position - 1`` whose hash is ``prev_hash`` ("" if it does).

    An export verifier passes the row's own position and ``prev_hash`` where its predecessor is
    not in the file: then only the row's own hash and its columns are checked. ``columns=False``
    leaves out whether the id, type and update columns agree with the envelope: a caller that
    decodes the envelope anyway compares them itself (:func:`columns_problem` otherwise).
    """
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


def iter_chain(session: Session, *, up_to: int | None = None) -> Iterable[ChainRow]:
    """The log's rows in position order, read in chunks (the log may be large)."""
    last = 0
    while True:
        query = (
            select(
                LoggedEvent.position, LoggedEvent.event_id, LoggedEvent.type, LoggedEvent.updateid,
                LoggedEvent.prev_hash, LoggedEvent.hash, LoggedEvent.envelope, LoggedEvent.publisher,
            )
            .where(LoggedEvent.position > last)
            .order_by(LoggedEvent.position)
            .limit(_CHUNK)
        )
        if up_to is not None:
            query = query.where(LoggedEvent.position <= up_to)
        batch = session.execute(query).all()
        if not batch:
            return
        for r in batch:
            yield ChainRow(r.position, r.event_id, r.type, r.updateid, r.prev_hash, r.hash, r.envelope, r.publisher)
        last = batch[-1].position


def verify(session: Session) -> VerifyResult:
    """Verify the whole log in the database, and that the head matches its end.

    Safe while the projection keeps appending: it checks the rows up to the head it read
    first; rows appended after that are the next verification's.
    """
    head = session.execute(select(LogHead.position, LogHead.hash).where(LogHead.id == HEAD_ID)).first()
    if head is None:
        return verify_rows(iter_chain(session))
    result = verify_rows(iter_chain(session, up_to=head.position), head=(head.position, head.hash))
    if not result.ok:
        return result
    # Read the last position before the head: appends commit rows and head together, so a
    # row past the head read afterwards was added without going through the appender.
    last = session.execute(select(func.max(LoggedEvent.position))).scalar_one_or_none() or 0
    head_now = session.execute(select(LogHead.position).where(LogHead.id == HEAD_ID)).scalar_one()
    if last > head_now:
        return VerifyResult(
            False, result.count, head_now + 1, f"rows after the head's last position {head_now} (up to {last})"
        )
    return result
