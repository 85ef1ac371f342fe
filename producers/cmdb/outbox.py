"""The transactional outbox: events are queued with the state change, then relayed with confirms.

Exactly once from the CMDB's side: a row is marked published only after the broker
confirmed it, and is retried until it is. A crash between the confirm and the mark
publishes it once more with the same message id (the event id), which consumers dedupe.
Several CMDB instances may share one database: only the holder of the relay lease publishes
(``relay_lease.py``), the others take over when it goes.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Protocol

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from bus.contract.envelope import Envelope
from bus.metrics import OUTBOX_PUBLISHED
from producers.cmdb.database import OUTBOX_TOUCHED, CmdbDatabase
from producers.cmdb.models import OutboxMessage, utcnow
from producers.cmdb.relay_lease import RelayLease

log = logging.getLogger(__name__)


def enqueue(session: Session, envelope: Envelope) -> bool:
    """Queue ``envelope`` in the caller's transaction; False when its id is already queued (a redelivery)."""
    exists = session.execute(select(OutboxMessage.id).where(OutboxMessage.event_id == envelope.id)).first()
    if exists is not None:
        log.info("outbox already holds %s %s; not queued again", envelope.type, envelope.id)
        return False
    session.add(
        OutboxMessage(
            event_id=envelope.id,
            update_id=envelope.updateid,
            event_type=envelope.type,
            routing_key=envelope.routing_key,
            envelope=envelope.to_bytes(),
            created_at=utcnow(),
            attempts=0,
        )
    )
    session.info[OUTBOX_TOUCHED] = True
    return True


class EnvelopePublisher(Protocol):
    """What the relay needs from a publisher: return only once the broker confirmed."""

    async def publish(self, envelope: Envelope) -> Envelope: ...


class OutboxRelay:
    """Publishes unpublished outbox rows in the order they were written, retrying while the broker is down."""

    def __init__(
        self,
        database: CmdbDatabase,
        publisher: EnvelopePublisher,
        *,
        poll_seconds: float = 0.2,
        batch_size: int = 100,
        max_backoff_seconds: float = 5.0,
    ) -> None:
        self._db = database
        self._publisher = publisher
        self._poll = poll_seconds
        self._batch = batch_size
        self._max_backoff = max_backoff_seconds
        self._wakeup: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lease = RelayLease(database.engine)
        self.published = 0

    def wake(self) -> None:
        """Ask the relay to look now (thread-safe; called after a transaction queued events)."""
        if self._loop is not None and self._wakeup is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._wakeup.set)

    async def run(self, stop: asyncio.Event) -> None:
        """Relay until ``stop`` is set; a failed publish backs off and starts again from the oldest row."""
        self._loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        backoff = self._poll
        try:
            while not stop.is_set():
                self._wakeup.clear()
                try:
                    await self.publish_pending()
                    backoff = self._poll
                    delay = self._poll
                except Exception as exc:  # broker down, refused, or the database busy: all retried
                    log.warning("outbox relay: %s; retrying in %.1fs", exc, backoff)
                    delay = backoff
                    backoff = min(backoff * 2, self._max_backoff)
                await _wait_any(stop, self._wakeup, timeout=delay)
        finally:
            await asyncio.to_thread(self._lease.release)

    async def publish_pending(self) -> int:
        """Publish every unpublished row, oldest first; returns how many were published."""
        count = 0
        while True:
            if not await asyncio.to_thread(self._lease.held):
                return count  # another instance's relay publishes
            rows = await asyncio.to_thread(self._pending)
            if not rows:
                return count
            for row_id, body in rows:
                envelope = Envelope.from_bytes(body)
                try:
                    await self._publisher.publish(envelope)
                except Exception as exc:
                    await asyncio.to_thread(self._record_failure, row_id, repr(exc))
                    raise
                await asyncio.to_thread(self._mark_published, row_id, utcnow())
                count += 1
                self.published += 1
                OUTBOX_PUBLISHED.inc()
                log.info("outbox published %s id=%s update=%s", envelope.type, envelope.id, envelope.updateid)

    def _pending(self) -> list[tuple[int, bytes]]:
        # Ids are taken in write order; a row committed late (a concurrent transaction on
        # PostgreSQL) is still found by the next pass, since the scan is by published_at.
        with self._db.transaction() as session:
            result = session.execute(
                select(OutboxMessage.id, OutboxMessage.envelope)
                .where(OutboxMessage.published_at.is_(None))
                .order_by(OutboxMessage.id)
                .limit(self._batch)
            )
            return [(row_id, body) for row_id, body in result]

    def _mark_published(self, row_id: int, when: datetime) -> None:
        with self._db.transaction() as session:
            session.execute(
                update(OutboxMessage)
                .where(OutboxMessage.id == row_id)
                .values(published_at=when, attempts=OutboxMessage.attempts + 1, last_error=None)
            )

    def _record_failure(self, row_id: int, error: str) -> None:
        with self._db.transaction() as session:
            session.execute(
                update(OutboxMessage)
                .where(OutboxMessage.id == row_id)
                .values(attempts=OutboxMessage.attempts + 1, last_error=error[:2000])
            )


def unpublished_count(database: CmdbDatabase) -> int:
    """How many events wait for the broker (for status and tests)."""
    with database.transaction() as session:
        count = session.scalar(select(func.count()).where(OutboxMessage.published_at.is_(None)))
        return count or 0


async def _wait_any(stop: asyncio.Event, wakeup: asyncio.Event, *, timeout: float) -> None:
    waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(wakeup.wait())]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
