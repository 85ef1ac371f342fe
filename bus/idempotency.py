"""Remembering which events a consumer has fully handled, so a redelivery has no second effect.

The runtime marks an event processed after its handler returned (its emitted events
already confirmed by the broker) and before acking it. A redelivered event found here
is acked without running the handler again.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from sqlalchemy import DateTime, String, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from domain.db import Base, make_engine, upgrade


class ProcessedEvent(Base):
    __tablename__ = "bus_processed_events"

    consumer: Mapped[str] = mapped_column(String(128), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    event_type: Mapped[str] = mapped_column(String(128))
    processed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ProcessedStore:
    """A per-consumer record of handled event ids in a SQL database (SQLite file by default)."""

    def __init__(self, url: str, consumer: str, *, migrate: bool = True) -> None:
        if migrate:
            upgrade(url, "bus")
        self._engine = make_engine(url)
        self._consumer = consumer

    def seen(self, event_id: str) -> bool:
        with Session(self._engine) as session:
            row = session.execute(
                select(ProcessedEvent.event_id).where(
                    ProcessedEvent.consumer == self._consumer, ProcessedEvent.event_id == event_id
                )
            ).first()
            return row is not None

    def mark(self, event_id: str, event_type: str) -> None:
        with Session(self._engine) as session:
            session.add(
                ProcessedEvent(
                    consumer=self._consumer,
                    event_id=event_id,
                    event_type=event_type,
                    processed_at=datetime.now(UTC),
                )
            )
            try:
                session.commit()
            except IntegrityError:  # marked by a concurrent redelivery: same outcome
                session.rollback()

    async def aseen(self, event_id: str) -> bool:
        return await asyncio.to_thread(self.seen, event_id)

    async def amark(self, event_id: str, event_type: str) -> None:
        await asyncio.to_thread(self.mark, event_id, event_type)

    def close(self) -> None:
        self._engine.dispose()
