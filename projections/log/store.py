"""The append-only event log in the database: its head, its rows, reading them back, verifying them.

The head row records the last position and hash, so removing rows from the end is noticed too.
Writers call :func:`lock_head` first in their transaction: it takes the database's write lock
(SQLite) or the head row's lock (PostgreSQL), so appends are serialised and positions are
gapless and in commit order.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, DateTime, func, select, update
from sqlalchemy.orm import Session

from bus.contract.envelope import Envelope
from projections.log.chain import AT, Chain, ChainRow, chain_hash
from projections.models import GENESIS_HASH, LoggedEvent, LogHead, as_utc

HEAD_ID = 1
CHUNK = 2_000
"""Log rows read per query (the log may be large)."""

_TABLE: Any = LoggedEvent.__table__
_TIMES = [i for i, c in enumerate(_TABLE.columns) if isinstance(c.type, DateTime)]


@dataclass
class Head(Chain):
    """The in-transaction view of the log's end: advanced as rows are added, written back by :func:`store_head`."""

    version: int = 0

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
        update(LogHead).where(LogHead.id == HEAD_ID).values(position=head.position, hash=head.hash,
                                                            version=head.version)
    )


def read_head(session: Session) -> tuple[int, str]:
    """The log's last position and hash as the head row records them ((0, genesis) for an empty log)."""
    head = session.execute(select(LogHead.position, LogHead.hash).where(LogHead.id == HEAD_ID)).first()
    return (0, GENESIS_HASH) if head is None else (int(head.position), str(head.hash))


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


def append(session: Session, head: Head, envelope: Envelope, received_at: datetime, publisher: str = ""
           ) -> LoggedEvent:
    """Add one row after ``head`` (the caller advances the head: :meth:`Head.advance`)."""
    row = LoggedEvent(**log_row(head, envelope, received_at, publisher))
    session.add(row)
    session.flush()
    return row


def read_rows(session: Session, *, after: int = 0, up_to: int | None = None,
              where: Sequence[ColumnElement[bool]] = (), stored: bool = False) -> Iterator[tuple[Any, ...]]:
    """The log rows after ``after`` up to ``up_to`` (and matching ``where``) in position order, as tuples
    in :data:`projections.log.chain.LOG_COLUMNS` order, read in chunks.

    Times are in UTC; ``stored`` (SQLite only): every value as the database stores it (times as
    SQLAlchemy's text), for copying into another SQLite log without parsing and formatting them.
    """
    last = after
    while True:
        query = select(_TABLE).where(_TABLE.c.position > last, *where)
        if up_to is not None:
            query = query.where(_TABLE.c.position <= up_to)
        query = query.order_by(_TABLE.c.position).limit(CHUNK)
        if stored:  # the same SELECT, without SQLAlchemy's processing of each value
            compiled = query.compile(dialect=session.get_bind().dialect, compile_kwargs={"literal_binds": True})
            rows = [tuple(r) for r in session.connection().exec_driver_sql(str(compiled))]
        else:
            rows = [utc_times(r) for r in session.execute(query)]
        if not rows:
            return
        yield from rows
        last = rows[-1][AT["position"]]


def utc_times(row: Sequence[Any]) -> tuple[Any, ...]:
    """A log row's values with its times in UTC (SQLite hands back naive UTC; PostgreSQL its session's zone)."""
    values = list(row)
    for i in _TIMES:
        if isinstance(values[i], datetime):
            values[i] = as_utc(values[i])
    return tuple(values)


# --- verification -------------------------------------------------------------------


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

    ``head`` (position, hash), if given, must match the last row: rows removed from the end show up there.
    """
    chain = Chain()
    publishers: dict[str | None, int] = {}
    for row in rows:
        problem = chain.follow(row)
        if problem:
            return VerifyResult(False, chain.position, row.position, problem, publishers)
        publishers[row.publisher] = publishers.get(row.publisher, 0) + 1
    count = chain.position
    if head is not None and head != (chain.position, chain.hash):
        head_position, head_hash = head
        return VerifyResult(
            False, count, count + 1,
            f"the head records {head_position} events ending in {head_hash[:12]}…, "
            f"but the log holds {count} ending in {chain.hash[:12]}…: rows were removed from the end",
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


def verify(session: Session) -> VerifyResult:
    """Verify the whole log in the database, and that the head matches its end.

    Safe while the projection keeps appending: it checks the rows up to the head it read
    first; rows appended after that are the next verification's.
    """
    head = session.execute(select(LogHead.position, LogHead.hash).where(LogHead.id == HEAD_ID)).first()
    if head is None:
        return verify_rows(ChainRow.of(r) for r in read_rows(session))
    rows = (ChainRow.of(r) for r in read_rows(session, up_to=head.position))
    result = verify_rows(rows, head=(head.position, head.hash))
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
