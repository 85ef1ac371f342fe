"""Remembering which events a consumer has fully handled, so a redelivery has no second effect.

The runtime marks an event processed after its handler returned (its emitted events
already confirmed by the broker) and before acking it. A redelivered event found here
is acked without running the handler again, if it is the same fact (the same
:func:`bus.contract.envelope.fact_hash`). The same id with different content is a conflict: two
different events claim one id (a decoy, or a broken producer); the runtime parks it with a
reason starting ``conflict:`` for an operator, never acks it as "already handled".
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import DateTime, String, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from bus.contract.envelope import CONFLICT_PREFIX, Envelope, fact_hash
from domain.db import Base, make_engine, upgrade


class ProcessedEvent(Base):
    __tablename__ = "bus_processed_events"

    consumer: Mapped[str] = mapped_column(String(128), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    event_type: Mapped[str] = mapped_column(String(128))
    processed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # bus_0002: NULL for ids marked before; such a redelivery is taken as a duplicate.
    content_hash: Mapped[str | None] = mapped_column(String(64), nullable=True, default=None)
    publisher: Mapped[str | None] = mapped_column(String(128), nullable=True, default=None)


@dataclass(frozen=True)
class Handled:
    """What the store recorded of a handled id: its content hash and the broker-verified user it came from."""

    event_type: str
    content_hash: str | None
    publisher: str | None

    def conflict(self, envelope: Envelope, publisher: str) -> str | None:
        """None if ``envelope`` is the fact handled before (a duplicate), else the conflict, for an operator."""
        if self.content_hash is None or self.content_hash == fact_hash(envelope):
            return None
        first = self.publisher if self.publisher is not None else "not recorded"
        return (
            f"{CONFLICT_PREFIX} event id {envelope.id} was handled before as a different {self.event_type} "
            f"(first published by {first or 'none set'}; this {envelope.type} by {publisher or 'none set'})"
        )


class ProcessedStore:
    """A per-consumer record of handled event ids in a SQL database (SQLite file by default)."""

    def __init__(self, url: str, consumer: str, *, migrate: bool = True) -> None:
        if migrate:
            upgrade(url, "bus")
        self._engine = make_engine(url)
        self._consumer = consumer

    def handled(self, event_id: str) -> Handled | None:
        """What was recorded when ``event_id`` was handled, or None if it was not."""
        with Session(self._engine) as session:
            row = session.execute(
                select(ProcessedEvent.event_type, ProcessedEvent.content_hash, ProcessedEvent.publisher).where(
                    ProcessedEvent.consumer == self._consumer, ProcessedEvent.event_id == event_id
                )
            ).first()
            return None if row is None else Handled(row.event_type, row.content_hash, row.publisher)

    def seen(self, event_id: str) -> bool:
        return self.handled(event_id) is not None

    def mark(self, event_id: str, event_type: str, *, content_hash: str | None = None, publisher: str = "") -> None:
        with Session(self._engine) as session:
            session.add(
                ProcessedEvent(
                    consumer=self._consumer,
                    event_id=event_id,
                    event_type=event_type,
                    processed_at=datetime.now(UTC),
                    content_hash=content_hash,
                    publisher=publisher,
                )
            )
            try:
                session.commit()
            except IntegrityError:  # marked by a concurrent redelivery: same outcome
                session.rollback()

    def mark_envelope(self, envelope: Envelope, publisher: str) -> None:
        """Mark ``envelope`` handled, with its content hash and the user it was delivered from."""
        self.mark(envelope.id, envelope.type, content_hash=fact_hash(envelope), publisher=publisher)

    async def ahandled(self, event_id: str) -> Handled | None:
        return await asyncio.to_thread(self.handled, event_id)

    async def aseen(self, event_id: str) -> bool:
        return await asyncio.to_thread(self.seen, event_id)

    async def amark(self, event_id: str, event_type: str) -> None:
        await asyncio.to_thread(self.mark, event_id, event_type)

    async def amark_envelope(self, envelope: Envelope, publisher: str) -> None:
        await asyncio.to_thread(self.mark_envelope, envelope, publisher)

    def close(self) -> None:
        self._engine.dispose()
