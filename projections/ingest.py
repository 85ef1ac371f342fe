"""Taking events into the projection: one database transaction per batch (a few if an event fails).

For each event of a batch, in one transaction: (1) append it to the log unless its id is
there already; (2) fold it into the status view and record it as applied, unless it was
applied already. One event whose reducer fails is left logged-but-unapplied (its message is
retried, and the retry applies it) without undoing the rest of the batch. A redelivered
event finds both its log row and its applied row and changes nothing. If a transaction
itself fails, nothing of its part of the batch is kept.

A batch is first tried the fast way (:func:`_ingest_fast`): which ids are logged and applied
is read with one query each, the log rows (hash chain computed in Python) and applied rows
are written with one multi-row INSERT each, the view's rows are read a scope at a time
(:class:`projections.view.RowCache`), and each touched update's counts and stage are derived
once at the end. If anything in it raises (a reducer, a database error), that transaction is
rolled back and the batch is halved, each half tried the fast way again in a transaction of
its own, until a part of at most 32 events is done the careful way (:func:`_ingest_careful`): a
savepoint per step of each event, so exactly the failing events are left out, as before. Both
give the same log and the same view (a function of which events are applied, not of how).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import Engine, insert, select
from sqlalchemy.orm import Session

from bus.consumer import Conflict
from bus.envelope import CONFLICT_PREFIX, FACT_FIELDS, Envelope
from bus.events import Event
from projections import log as event_log
from projections import view
from projections.models import AppliedEvent, LoggedEvent, RejectedEvent

logger = logging.getLogger(__name__)

_MAX_SEQUENCE = 2**63 - 1  # the log's BIGINT column

OutcomeStatus = Literal["appended", "duplicate", "applied_late", "failed"]


class ConflictingDuplicate(Conflict):
    """An event id that is already logged arrived with different content: parked as a conflict, never dropped."""


def _conflict(envelope: Envelope, position: int, first_publisher: str | None, publisher: str) -> ConflictingDuplicate:
    first = "not recorded" if first_publisher is None else (first_publisher or "none set")
    return ConflictingDuplicate(
        f"{CONFLICT_PREFIX} event id {envelope.id} ({envelope.type}) is already logged at position {position} with "
        f"different content (first published by {first}; this one by {publisher or 'none set'})"
    )


_Item = tuple[Envelope, Event, str]  # an event, and the broker-verified user it was delivered from


@dataclass(frozen=True)
class Outcome:
    """What ingesting one event did; ``error`` is set exactly when it ``failed``."""

    event_id: str
    status: OutcomeStatus
    position: int | None = None
    error: Exception | None = None

    @property
    def changed(self) -> bool:
        return self.status in ("appended", "applied_late")


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
    recorded in the log and covered by its hash chain ("" for each when not given).

    If the fast way fails, the batch is split in halves, each tried the fast way again in a
    transaction of its own, down to :data:`_CAREFUL_AT_MOST` events, which go event by event: so
    one bad event in a big batch costs a few more transactions, not the whole batch done event
    by event (≈ 100 times slower per event). Raises only if a transaction failed as a whole:
    then nothing of that part was kept, and halves committed before it are found logged and
    applied when the batch is retried (outcome ``duplicate``).
    """
    if publishers is not None and len(publishers) != len(items):
        raise ValueError(f"{len(publishers)} publishers for {len(items)} events")
    who = publishers if publishers is not None else [""] * len(items)
    return _ingest(engine, [(envelope, event, p) for (envelope, event), p in zip(items, who, strict=True)], clock)


def _ingest(engine: Engine, items: Sequence[_Item], clock: Callable[[], datetime]) -> list[Outcome]:
    """:func:`ingest_batch` on (envelope, event, publisher) items: the fast way, halved on failure."""
    if not items:
        return []
    try:
        return _ingest_fast(engine, items, clock)
    except Exception as exc:  # narrow down to the events that fail, keep the rest on the fast path
        logger.info("projection: batch of %d failed the fast way: %r", len(items), exc)
    if len(items) <= _CAREFUL_AT_MOST:
        return _ingest_careful(engine, items, clock)
    half = len(items) // 2
    return _ingest(engine, items[:half], clock) + _ingest(engine, items[half:], clock)


_CAREFUL_AT_MOST = 32  # events: below this, halving again costs more failed tries than it saves


_IN_CHUNK = 500  # ids per IN (...) list: well under SQLite's bound-parameter limit


def _chunks(values: list[str]) -> list[list[str]]:
    return [values[i:i + _IN_CHUNK] for i in range(0, len(values), _IN_CHUNK)]


def _ingest_fast(engine: Engine, items: Sequence[_Item], clock: Callable[[], datetime]) -> list[Outcome]:
    """The whole batch in one go; raises (having kept nothing) if any event's step fails."""
    with Session(engine) as session, session.begin():
        session.info[view.ROW_CACHE] = view.RowCache()
        head = event_log.lock_head(session)
        received_at = clock().astimezone(UTC)
        ids = list(dict.fromkeys(envelope.id for envelope, _, _ in items))
        logged: dict[str, tuple[int, str, str | None]] = {}
        applied: set[str] = set()
        for chunk in _chunks(ids):
            logged.update(
                (r.event_id, (r.position, r.envelope, r.publisher)) for r in session.execute(
                    select(LoggedEvent.event_id, LoggedEvent.position, LoggedEvent.envelope, LoggedEvent.publisher)
                    .where(LoggedEvent.event_id.in_(chunk)))
            )
            applied.update(session.scalars(select(AppliedEvent.event_id).where(AppliedEvent.event_id.in_(chunk))))
        view.prefetch_updates(session, (envelope.updateid for envelope, _, _ in items))
        view.prefetch_servers(session, (event for _, event, _ in items), (envelope for envelope, _, _ in items))
        log_rows: list[dict[str, Any]] = []
        applied_rows: list[dict[str, Any]] = []
        touched: dict[str, None] = {}
        outcomes: list[Outcome] = []
        for envelope, event, publisher in items:
            prior = logged.get(envelope.id)
            appended = prior is None
            if prior is None:
                if envelope.sequence > _MAX_SEQUENCE:
                    error: Exception = ValueError(
                        f"sequence {envelope.sequence} is out of range (max {_MAX_SEQUENCE})")
                    logger.warning("projection: could not log %s %s: %s", envelope.type, envelope.id, error)
                    outcomes.append(Outcome(envelope.id, "failed", None, error))
                    continue
                row = event_log.log_row(head, envelope, received_at, publisher)
                head.position, head.hash = row["position"], row["hash"]
                log_rows.append(row)
                position = row["position"]
                logged[envelope.id] = (position, row["envelope"], row["publisher"])
            else:
                position, text, first_publisher = prior
                if not _same_fact(text, envelope):
                    error = _conflict(envelope, position, first_publisher, publisher)
                    logger.warning("projection: could not log %s %s: %s", envelope.type, envelope.id, error)
                    outcomes.append(Outcome(envelope.id, "failed", None, error))
                    continue
            if envelope.id in applied:
                outcomes.append(Outcome(envelope.id, "appended" if appended else "duplicate", position))
                continue
            view.apply(session, envelope, event, derive=False)
            applied.add(envelope.id)
            applied_rows.append({"event_id": envelope.id, "position": position, "updateid": envelope.updateid})
            touched[envelope.updateid] = None
            outcomes.append(Outcome(envelope.id, "appended" if appended else "applied_late", position))
        # Core executemany: the ORM's bulk path would build an object's worth of state per row
        connection = session.connection()
        if log_rows:
            connection.execute(insert(LoggedEvent), log_rows)
        if applied_rows:
            connection.execute(insert(AppliedEvent), applied_rows)
        view.refresh_all(session, touched)
        if any(o.changed for o in outcomes):
            head.version += 1
        event_log.store_head(session, head)
    return outcomes


def _ingest_careful(engine: Engine, items: Sequence[_Item], clock: Callable[[], datetime]) -> list[Outcome]:
    """Event by event, a savepoint per step: a failing event is left out, the rest kept."""
    with Session(engine) as session, session.begin():
        head = event_log.lock_head(session)
        received_at = clock()
        outcomes = [_ingest_one(session, head, envelope, event, publisher, received_at)
                    for envelope, event, publisher in items]
        if any(o.changed for o in outcomes):
            head.version += 1
        event_log.store_head(session, head)
    return outcomes


def _same_fact(logged: str, envelope: Envelope) -> bool:
    """Whether ``envelope`` is the fact logged as ``logged`` (:data:`bus.envelope.FACT_FIELDS`)."""
    first = json.loads(logged)
    again = envelope.model_dump(mode="json", exclude_none=True)
    return all(first.get(name) == again.get(name) for name in FACT_FIELDS)


def _ingest_one(
    session: Session, head: event_log.Head, envelope: Envelope, event: Event, publisher: str, received_at: datetime
) -> Outcome:
    try:
        with session.begin_nested():
            row = event_log.find(session, envelope.id)
            appended = row is None
            if row is None:
                if envelope.sequence > _MAX_SEQUENCE:
                    raise ValueError(f"sequence {envelope.sequence} is out of range (max {_MAX_SEQUENCE})")
                row = event_log.append(session, head, envelope, received_at, publisher)
            elif not _same_fact(row.envelope, envelope):
                raise _conflict(envelope, row.position, row.publisher, publisher)
            position = row.position
        if appended:
            head.advance(row)
    except Exception as exc:
        logger.warning("projection: could not log %s %s: %s", envelope.type, envelope.id, exc)
        return Outcome(envelope.id, "failed", None, exc)

    if session.get(AppliedEvent, envelope.id) is not None:
        return Outcome(envelope.id, "appended" if appended else "duplicate", position)
    try:
        apply_logged(session, envelope, event, position)
    except Exception as exc:
        logger.warning(
            "projection: %s %s is logged at %d but not applied: %r", envelope.type, envelope.id, position, exc
        )
        return Outcome(envelope.id, "failed", position, exc)
    return Outcome(envelope.id, "appended" if appended else "applied_late", position)


def apply_logged(session: Session, envelope: Envelope, event: Event, position: int, *, derive: bool = True) -> None:
    """Fold a logged event into the status view and record it applied, in a savepoint.

    If the reducer raises, the savepoint is rolled back (nothing of the event is in the view)
    and the error propagates. The live projection and a replay (:mod:`projections.replay`)
    both apply events through here; ``derive`` is :func:`projections.view.apply`'s.
    """
    with session.begin_nested():
        view.apply(session, envelope, event, derive=derive)
        session.add(AppliedEvent(event_id=envelope.id, position=position, updateid=envelope.updateid))
        session.flush()


# --- rejected (parked) messages ---------------------------------------------------------


def record_rejection(
    engine: Engine,
    *,
    service: str,
    reason: str,
    body: bytes,
    routing_key: str,
    message_id: str | None,
    attempt: int,
    parked_at: datetime,
) -> int:
    """Keep a message the projection's consumer parked, so the dashboard can list it; returns its row id.

    The same body parked again for the same reason (a redelivery) only bumps ``times``.
    """
    reason = _clean(reason)
    dedupe_key = hashlib.sha256(body + b"\x00" + reason.encode("utf-8")).hexdigest()
    parked_at = parked_at.astimezone(UTC)
    fields = _envelope_fields(body)
    with Session(engine) as session, session.begin():
        head = event_log.lock_head(session)  # also serialises with appenders; bumps the change counter
        row = session.execute(
            select(RejectedEvent).where(RejectedEvent.dedupe_key == dedupe_key)
        ).scalar_one_or_none()
        if row is None:
            row = RejectedEvent(
                dedupe_key=dedupe_key,
                service=_clip(service, 128) or "?",
                reason=reason,
                routing_key=_clip(_clean(routing_key), 256) or "",
                message_id=_clip(_clean(message_id), 256) if message_id else None,
                body=_clean(body.decode("utf-8", errors="replace")),
                body_bytes=len(body),
                attempt=attempt,
                first_parked_at=parked_at,
                last_parked_at=parked_at,
                times=1,
                **fields,
            )
            session.add(row)
        else:
            row.times += 1
            row.attempt = max(row.attempt, attempt)
            row.last_parked_at = parked_at
        head.version += 1
        event_log.store_head(session, head)
        session.flush()
        return row.id


def _clean(value: str | None) -> str:
    return (value or "").replace("\x00", "\ufffd")


def _clip(value: str | None, limit: int) -> str | None:
    return value[:limit] if value else None


def _envelope_fields(body: bytes) -> dict[str, Any]:
    """What can be read of an envelope that failed validation (best effort, for linking on the dashboard)."""
    limits = {"id": 128, "type": 128, "updateid": 64, "project": 64, "area": 64, "source": 256}
    names = {"id": "event_id", "type": "event_type"}
    out: dict[str, Any] = {names.get(k, k): None for k in limits}
    try:
        raw = json.loads(body.decode("utf-8"))
    except (ValueError, RecursionError):  # not UTF-8, not JSON, or nested deeper than the parser recurses
        return out
    if not isinstance(raw, dict):
        return out
    for key, limit in limits.items():
        value = raw.get(key)
        if isinstance(value, str) and value and len(value) <= limit:
            out[names.get(key, key)] = _clean(value)
    return out
