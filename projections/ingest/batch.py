"""Taking a batch of events into the projection: log each, fold it into the view, in one transaction.

For each event of a batch, in one transaction: (1) append it to the log unless its id is there
already; (2) fold it into the status view and record it as applied, unless it was applied
already. A redelivered event finds both its log row and its applied row and changes nothing.

The view rows of the updates the batch touches are read once (:func:`projections.view.load`),
the events folded into them in memory (:func:`projections.view.fold`), and what changed written
back (:func:`projections.view.write`), with the log and applied rows, one INSERT each. If
anything raises (a reducer, the database), the transaction is rolled back and each half of the
batch is tried the same way (:func:`projections.view.fold.narrow`), down to single events: an
event whose reducer fails is then logged but left unapplied (its message is retried, and the
retry applies it), without undoing the rest of the batch.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import Connection, Engine, insert, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from bus.consumer import Conflict
from bus.contract.envelope import CONFLICT_PREFIX, FACT_FIELDS, Envelope
from bus.contract.events import Event
from projections import log as event_log
from projections import view
from projections.models import AppliedEvent, LoggedEvent
from projections.view.fold import narrow

logger = logging.getLogger(__name__)

_MAX_SEQUENCE = 2**63 - 1  # the log's BIGINT column
_IN_CHUNK = 500  # ids per IN (...) list: well under SQLite's bound-parameter limit

OutcomeStatus = Literal["appended", "duplicate", "applied_late", "failed"]


class ConflictingDuplicate(Conflict):
    """An event id that is already logged arrived with different content: parked as a conflict, never dropped."""


@dataclass(frozen=True)
class Outcome:
    """What ingesting one event did; ``error`` is set exactly when it ``failed``."""

    event_id: str
    status: OutcomeStatus
    position: int | None = None
    error: Exception | None = None


_Item = tuple[Envelope, Event, str]  # an event, and the broker-verified user it was delivered from


def utcnow() -> datetime:
    return datetime.now(UTC)


def ingest_batch(
    engine: Engine,
    items: Sequence[tuple[Envelope, Event]],
    *,
    clock: Callable[[], datetime] = utcnow,
    publishers: Sequence[str] | None = None,
) -> list[Outcome]:
    """Log and apply ``items``, in one transaction unless one of them fails; one outcome per item, in order.

    ``publishers`` are the deliveries' broker-verified users (``Incoming.publisher``), one per item,
    recorded in the log and covered by its hash chain ("" for each when not given). Raises only if a
    transaction failed as a whole: then nothing of that part was kept, and halves committed before it
    are found logged and applied when the batch is retried (outcome ``duplicate``).
    """
    if publishers is not None and len(publishers) != len(items):
        raise ValueError(f"{len(publishers)} publishers for {len(items)} events")
    who = publishers if publishers is not None else [""] * len(items)
    batch = [(envelope, event, p) for (envelope, event), p in zip(items, who, strict=True)]
    return narrow(batch, lambda part: _ingest(engine, part, clock))


def _ingest(engine: Engine, items: Sequence[_Item], clock: Callable[[], datetime]) -> list[Outcome]:
    try:
        return _transaction(engine, items, clock, fold=True)
    except Exception as exc:  # one event: the database refused what it made of the view: log it unapplied
        if len(items) > 1 or _connection_lost(exc):
            raise
        logger.warning("projection: %s could not be applied: %r", items[0][0].id, exc)
        error = exc
    try:
        return [_unapplied(outcome, error) for outcome in _transaction(engine, items, clock, fold=False)]
    except Exception as exc:
        if _connection_lost(exc):
            raise
        envelope = items[0][0]
        logger.warning("projection: could not log %s %s: %r", envelope.type, envelope.id, exc)
        return [Outcome(envelope.id, "failed", None, exc)]


def _connection_lost(exc: Exception) -> bool:
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


def _unapplied(outcome: Outcome, error: Exception) -> Outcome:
    """A logged event's outcome, as one left unapplied for ``error``."""
    if outcome.status in ("failed", "duplicate"):
        return outcome
    return Outcome(outcome.event_id, "failed", outcome.position, error)


def _transaction(engine: Engine, items: Sequence[_Item], clock: Callable[[], datetime], *, fold: bool
                 ) -> list[Outcome]:
    """The whole of ``items`` in one transaction; raises (having kept nothing) if any part of it does.

    ``fold=False``: log the events, fold none (each comes back ``failed`` unless it was a duplicate).
    A single event whose reducer raises is logged and left unapplied.
    """
    with Session(engine) as session, session.begin():
        head = event_log.lock_head(session)
        received_at = clock().astimezone(UTC)
        connection = session.connection()
        logged, applied = _known(connection, [envelope.id for envelope, _, _ in items])
        log_rows: list[dict[str, Any]] = []
        to_fold: list[tuple[int, Envelope, Event, int]] = []  # (outcome index, envelope, event, position)
        outcomes: list[Outcome] = []
        for envelope, event, publisher in items:
            prior = logged.get(envelope.id)
            if prior is None:
                if envelope.sequence > _MAX_SEQUENCE:
                    outcomes.append(_failed(envelope, ValueError(
                        f"sequence {envelope.sequence} is out of range (max {_MAX_SEQUENCE})")))
                    continue
                row = event_log.log_row(head, envelope, received_at, publisher)
                head.position, head.hash = row["position"], row["hash"]
                log_rows.append(row)
                position = row["position"]
                logged[envelope.id] = (position, row["envelope"], row["publisher"])
            else:
                position, text, first_publisher = prior
                if not _same_fact(text, envelope):
                    outcomes.append(_failed(envelope, _conflict(envelope, position, first_publisher, publisher)))
                    continue
            if envelope.id in applied:
                outcomes.append(Outcome(envelope.id, "appended" if prior is None else "duplicate", position))
                continue
            if fold:
                applied.add(envelope.id)
                to_fold.append((len(outcomes), envelope, event, position))
            outcomes.append(Outcome(envelope.id, "appended" if prior is None else "applied_late", position))
        rows = view.MemoryRows()
        view.load(connection, rows, (envelope.updateid for _, envelope, _, _ in to_fold))
        try:
            view.fold(rows, ((envelope, event) for _, envelope, event, _ in to_fold))
        except view.ReducerFailed as failed:
            if len(to_fold) > 1:
                raise
            index, envelope, _, position = to_fold.pop()
            logger.warning("projection: %s %s is logged at %d but not applied: %r", envelope.type, envelope.id,
                           position, failed.error)
            outcomes[index] = Outcome(envelope.id, "failed", position, failed.error)
        if log_rows:  # Core executemany: the ORM would build an object's worth of state per row
            connection.execute(insert(LoggedEvent), log_rows)
        if to_fold:
            view.write(connection, rows.changes())
            connection.execute(insert(AppliedEvent), [
                {"event_id": envelope.id, "position": position, "updateid": envelope.updateid}
                for _, envelope, _, position in to_fold])
        if any(o.status in ("appended", "applied_late") for o in outcomes):  # what the live stream watches
            head.version += 1
        event_log.store_head(session, head)
    return outcomes


def _known(connection: Connection, ids: list[str]) -> tuple[dict[str, tuple[int, str, str | None]], set[str]]:
    """Which of ``ids`` are logged (their position, envelope and publisher) and which applied."""
    unique = list(dict.fromkeys(ids))
    logged: dict[str, tuple[int, str, str | None]] = {}
    applied: set[str] = set()
    for start in range(0, len(unique), _IN_CHUNK):
        chunk = unique[start:start + _IN_CHUNK]
        logged.update((r.event_id, (r.position, r.envelope, r.publisher)) for r in connection.execute(
            select(LoggedEvent.event_id, LoggedEvent.position, LoggedEvent.envelope, LoggedEvent.publisher)
            .where(LoggedEvent.event_id.in_(chunk))))
        applied.update(connection.execute(
            select(AppliedEvent.event_id).where(AppliedEvent.event_id.in_(chunk))).scalars())
    return logged, applied


def _failed(envelope: Envelope, error: Exception) -> Outcome:
    logger.warning("projection: could not log %s %s: %s", envelope.type, envelope.id, error)
    return Outcome(envelope.id, "failed", None, error)


def _conflict(envelope: Envelope, position: int, first_publisher: str | None, publisher: str) -> ConflictingDuplicate:
    first = "not recorded" if first_publisher is None else (first_publisher or "none set")
    return ConflictingDuplicate(
        f"{CONFLICT_PREFIX} event id {envelope.id} ({envelope.type}) is already logged at position {position} with "
        f"different content (first published by {first}; this one by {publisher or 'none set'})"
    )


def _same_fact(logged: str, envelope: Envelope) -> bool:
    """Whether ``envelope`` is the fact logged as ``logged`` (:data:`bus.contract.envelope.FACT_FIELDS`)."""
    first = json.loads(logged)
    again = envelope.model_dump(mode="json", exclude_none=True)
    return all(first.get(name) == again.get(name) for name in FACT_FIELDS)
