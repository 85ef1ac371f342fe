"""What the notifier remembers: one delivery per (event, webhook) and every attempt at it.

A delivery is written as *pending* before the triggering event is acked, so a notifier that
dies with a call still to make finds it here when it starts again; the unique (event id,
webhook) pair makes a redelivered event find its delivery instead of making another.
Tables: ``notifier_*``, created by the ``notifier`` Alembic branch.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal, cast

from sqlalchemy import DateTime, ForeignKey, Integer, String, Text, UniqueConstraint, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from domain.db import Base, make_engine, upgrade

DeliveryStatus = Literal["pending", "delivered", "failed"]
AttemptOutcome = Literal["delivered", "retry", "rejected", "exhausted"]


class NotifierDelivery(Base):
    __tablename__ = "notifier_deliveries"
    __table_args__ = (UniqueConstraint("event_id", "webhook_key", name="uq_notifier_deliveries_event_webhook"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(128))
    webhook_key: Mapped[str] = mapped_column(String(64), doc="sha256 of the URL: the URL itself may be long")
    webhook_url: Mapped[str] = mapped_column(Text)
    event_type: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(16))
    project: Mapped[str] = mapped_column(String(64))
    area: Mapped[str] = mapped_column(String(64))
    update_id: Mapped[str] = mapped_column(String(64), index=True)
    body: Mapped[str] = mapped_column(Text, doc="the exact request body, resent unchanged by every attempt")
    status: Mapped[str] = mapped_column(String(16), index=True)
    attempts: Mapped[int] = mapped_column(Integer)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_error: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class NotifierAttempt(Base):
    __tablename__ = "notifier_attempts"

    delivery_id: Mapped[int] = mapped_column(
        Integer, ForeignKey("notifier_deliveries.id", ondelete="CASCADE"), primary_key=True
    )
    attempt: Mapped[int] = mapped_column(Integer, primary_key=True)
    delivery_uuid: Mapped[str] = mapped_column(String(36), doc="the X-Hotupdate-Delivery header sent")
    attempted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    duration_ms: Mapped[int] = mapped_column(Integer)
    status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[str] = mapped_column(Text)
    outcome: Mapped[str] = mapped_column(String(16))


@dataclass(frozen=True)
class NewDelivery:
    """A delivery to record: one notification of one event to one webhook."""

    event_id: str
    event_type: str
    webhook_key: str
    webhook_url: str
    kind: str
    project: str
    area: str
    update_id: str
    body: str


@dataclass(frozen=True)
class DeliveryRecord:
    """A snapshot of one delivery's row."""

    id: int
    event_id: str
    event_type: str
    webhook_url: str
    kind: str
    project: str
    area: str
    update_id: str
    body: str
    status: DeliveryStatus
    attempts: int
    next_attempt_at: datetime
    last_status_code: int | None
    last_error: str
    created_at: datetime
    finished_at: datetime | None

    @classmethod
    def of(cls, row: NotifierDelivery) -> DeliveryRecord:
        return cls(
            row.id, row.event_id, row.event_type, row.webhook_url, row.kind, row.project, row.area, row.update_id,
            row.body, cast(DeliveryStatus, row.status), row.attempts, _aware(row.next_attempt_at),
            row.last_status_code, row.last_error, _aware(row.created_at),
            _aware(row.finished_at) if row.finished_at is not None else None,
        )


@dataclass(frozen=True)
class AttemptRecord:
    """One HTTP call made for a delivery, and what came of it."""

    attempt: int
    delivery_uuid: str
    attempted_at: datetime
    duration_ms: int
    status_code: int | None
    error: str
    outcome: AttemptOutcome


def _now() -> datetime:
    return datetime.now(UTC)


def _aware(value: datetime) -> datetime:
    # SQLite hands back naive datetimes for timezone-aware columns; everything here is written in UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


class DeliveryStore:
    """The notifier's SQL state (SQLite file by default, PostgreSQL in production); sync and async calls."""

    def __init__(self, url: str, *, migrate: bool = True) -> None:
        if migrate:
            upgrade(url, "notifier")
        self._engine = make_engine(url)

    def close(self) -> None:
        self._engine.dispose()

    def enqueue(self, deliveries: Sequence[NewDelivery]) -> list[DeliveryRecord]:
        """Record each delivery as pending unless it exists; returns every one's current record."""
        return [self._enqueue_one(d) for d in deliveries]

    def _enqueue_one(self, new: NewDelivery) -> DeliveryRecord:
        with Session(self._engine) as session:
            existing = self._find(session, new.event_id, new.webhook_key)
            if existing is not None:
                return DeliveryRecord.of(existing)
            now = _now()
            row = NotifierDelivery(
                event_id=new.event_id, webhook_key=new.webhook_key, webhook_url=new.webhook_url,
                event_type=new.event_type, kind=new.kind, project=new.project, area=new.area,
                update_id=new.update_id, body=new.body, status="pending", attempts=0, next_attempt_at=now,
                last_status_code=None, last_error="", created_at=now, finished_at=None,
            )
            session.add(row)
            try:
                session.commit()
            except IntegrityError:  # the same event handled concurrently: take the winner's row
                session.rollback()
                winner = self._find(session, new.event_id, new.webhook_key)
                if winner is None:
                    raise
                return DeliveryRecord.of(winner)
            return DeliveryRecord.of(row)

    @staticmethod
    def _find(session: Session, event_id: str, key: str) -> NotifierDelivery | None:
        return session.execute(
            select(NotifierDelivery).where(NotifierDelivery.event_id == event_id, NotifierDelivery.webhook_key == key)
        ).scalar_one_or_none()

    def get(self, delivery_id: int) -> DeliveryRecord | None:
        with Session(self._engine) as session:
            row = session.get(NotifierDelivery, delivery_id)
            return DeliveryRecord.of(row) if row is not None else None

    def pending(self) -> list[DeliveryRecord]:
        """Deliveries still to be made, oldest first."""
        return self.deliveries(statuses=("pending",), newest_first=False)

    def deliveries(
        self,
        *,
        statuses: Sequence[DeliveryStatus] = (),
        update_id: str | None = None,
        limit: int | None = None,
        newest_first: bool = True,
    ) -> list[DeliveryRecord]:
        query = select(NotifierDelivery)
        if statuses:
            query = query.where(NotifierDelivery.status.in_(statuses))
        if update_id is not None:
            query = query.where(NotifierDelivery.update_id == update_id)
        order = NotifierDelivery.id.desc() if newest_first else NotifierDelivery.id.asc()
        query = query.order_by(order).limit(limit)
        with Session(self._engine) as session:
            return [DeliveryRecord.of(row) for row in session.execute(query).scalars()]

    def record_attempt(
        self, delivery_id: int, attempt: AttemptRecord, *, status: DeliveryStatus, next_attempt_at: datetime
    ) -> None:
        """Write one attempt and the delivery's new state together."""
        with Session(self._engine) as session:
            row = session.get(NotifierDelivery, delivery_id)
            if row is None:
                raise LookupError(f"no delivery {delivery_id}")
            session.add(NotifierAttempt(
                delivery_id=delivery_id, attempt=attempt.attempt, delivery_uuid=attempt.delivery_uuid,
                attempted_at=attempt.attempted_at, duration_ms=attempt.duration_ms,
                status_code=attempt.status_code, error=attempt.error, outcome=attempt.outcome,
            ))
            row.attempts = attempt.attempt
            row.status = status
            row.last_status_code = attempt.status_code
            row.last_error = attempt.error
            row.next_attempt_at = next_attempt_at
            if status != "pending":
                row.finished_at = attempt.attempted_at
            session.commit()

    def claim(self, record: DeliveryRecord, *, lease_seconds: float) -> bool:
        """Take ``record``'s next attempt for this notifier: False if another took it (or made it) first.

        One conditional UPDATE: it succeeds for the one notifier that finds the attempt count it read
        and the attempt due; it pushes the due time past the call's length, so the others wait for the
        claimer's record (or, if the claimer died mid-call, make the attempt after the lease).
        """
        now = _now()
        with Session(self._engine) as session:
            result = session.execute(
                update(NotifierDelivery)
                .where(NotifierDelivery.id == record.id, NotifierDelivery.status == "pending",
                       NotifierDelivery.attempts == record.attempts, NotifierDelivery.next_attempt_at <= now)
                .values(next_attempt_at=now + timedelta(seconds=lease_seconds))
            )
            session.commit()
            return bool(getattr(result, "rowcount", 0) == 1)

    def give_up(self, delivery_id: int, reason: str) -> None:
        """Mark a pending delivery failed without calling it (its webhook is no longer configured)."""
        with Session(self._engine) as session:
            row = session.get(NotifierDelivery, delivery_id)
            if row is None or row.status != "pending":
                return
            row.status, row.last_error, row.finished_at = "failed", reason, _now()
            session.commit()

    def attempts(self, delivery_id: int) -> list[AttemptRecord]:
        with Session(self._engine) as session:
            rows = session.execute(
                select(NotifierAttempt).where(NotifierAttempt.delivery_id == delivery_id)
                .order_by(NotifierAttempt.attempt)
            ).scalars()
            return [
                AttemptRecord(r.attempt, r.delivery_uuid, _aware(r.attempted_at), r.duration_ms, r.status_code,
                              r.error, cast(AttemptOutcome, r.outcome))
                for r in rows
            ]

    # --- the same calls from the event loop, off its thread -------------------------

    async def aenqueue(self, deliveries: Sequence[NewDelivery]) -> list[DeliveryRecord]:
        return await asyncio.to_thread(self.enqueue, deliveries)

    async def aget(self, delivery_id: int) -> DeliveryRecord | None:
        return await asyncio.to_thread(self.get, delivery_id)

    async def apending(self) -> list[DeliveryRecord]:
        return await asyncio.to_thread(self.pending)

    async def arecord_attempt(
        self, delivery_id: int, attempt: AttemptRecord, *, status: DeliveryStatus, next_attempt_at: datetime
    ) -> None:
        await asyncio.to_thread(
            functools.partial(self.record_attempt, delivery_id, attempt, status=status, next_attempt_at=next_attempt_at)
        )

    async def aclaim(self, record: DeliveryRecord, *, lease_seconds: float) -> bool:
        return await asyncio.to_thread(functools.partial(self.claim, record, lease_seconds=lease_seconds))

    async def agive_up(self, delivery_id: int, reason: str) -> None:
        await asyncio.to_thread(self.give_up, delivery_id, reason)
