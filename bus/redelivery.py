"""Where a delivery goes when it is not handled: a retry through a delay queue, or the parking queue.

Every move is a copy published by the service itself (its own ``user_id``; RabbitMQ would refuse the
original's), confirmed by the broker, and only then is the original acked; if the copy cannot be
published, the original goes back to its queue. The copy carries the original's verified publisher and
routing key in headers, believed only on a copy from the service's own login through the default
exchange (:meth:`Redelivery.origin`): one that came back from its own delay queue.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from bus.contract.envelope import Envelope
from bus.metrics import ConsumerMetrics
from bus.publisher import AsyncPublisher, PublishError
from bus.topology import ServiceQueue, Topology

log = logging.getLogger(__name__)

ATTEMPT_HEADER = "x-hotupdate-attempt"
REASON_HEADER = "x-hotupdate-park-reason"
# On retry and parked copies: who published the original (as the broker verified it), and with which routing key.
PUBLISHER_HEADER = "x-hotupdate-publisher"
ROUTING_KEY_HEADER = "x-hotupdate-original-routing-key"
PUBLISHER_HEADER = "x-hotupdate-publisher"
ROUTING_KEY_HEADER = "x-hotupdate-original-routing-key"


@dataclass(frozen=True)
class Rejection:
    """A message this service parked: what it was, where it came from, and why."""

    service: str
    reason: str
    body: bytes
    routing_key: str
    message_id: str | None
    attempt: int
    parked_at: datetime


RejectHook = Callable[[Rejection], Awaitable[None]]


class Reject(Exception):
    """Raised by a handler for an event that can never succeed: parked at once, without retries."""


class Conflict(Reject):
    """A known event id arrived with different content: parked at once, its message (``conflict: …``) the reason.

    Never an "already handled": an operator must see that two different events claim one id.
    """


def rejected_reason(exc: Reject) -> str:
    return str(exc) if isinstance(exc, Conflict) else f"rejected by handler: {exc}"


class Redelivery:
    """Retries and parks the deliveries of one service queue (see the module docstring)."""

    def __init__(self, *, spec: ServiceQueue, topology: Topology, publisher: AsyncPublisher, login: str,
                 metrics: ConsumerMetrics, on_reject: RejectHook | None) -> None:
        self._spec = spec
        self._topology = topology
        self._publisher = publisher
        self._login = login
        self._metrics = metrics
        self._on_reject = on_reject
        self.parked = 0

    @property
    def name(self) -> str:
        return self._spec.service

    async def retry_or_park(
        self, message: AbstractIncomingMessage, envelope: Envelope, exc: Exception, attempt: int
    ) -> None:
        detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        delays = self._spec.retry_delays_ms
        if attempt > len(delays):
            await self.park(message, f"handler failed after {attempt} attempts: {detail}", attempt,
                             envelope.event_name)
            return
        self._metrics.retried(envelope.event_name)
        delay = delays[attempt - 1]
        log.warning(
            "service %s: %s %s failed (attempt %d): %s; retrying in %d ms",
            self.name, envelope.type, envelope.id, attempt, detail, delay,
        )
        await self._republish(
            message, self._topology.delay_queue(self.name, delay), {ATTEMPT_HEADER: attempt + 1,
                                                                     "x-hotupdate-last-error": detail[:1000]}
        )

    async def park(self, message: AbstractIncomingMessage, reason: str, attempt: int,
                    event_name: str = "malformed") -> None:
        parked_at = datetime.now(UTC)
        log.warning("service %s: parking message %s: %s", self.name, message.message_id, reason)
        _, routing_key = self.origin(message)
        parked = await self._republish(
            message,
            self._topology.parking_queue(self.name),
            {
                REASON_HEADER: reason[:4000],
                "x-hotupdate-parked-at": parked_at.isoformat(),
                "x-hotupdate-parked-by": self.name,
                ATTEMPT_HEADER: attempt,
            },
        )
        if not parked:
            return
        self.parked += 1
        self._metrics.parked(event_name)
        if self._on_reject is not None:
            # After the parked copy is confirmed: the hook only records; if it fails, the
            # message is safe in the parking queue all the same.
            try:
                await self._on_reject(
                    Rejection(self.name, reason, message.body, routing_key,
                              message.message_id, attempt, parked_at)
                )
            except Exception:
                log.exception("service %s: on_reject hook failed for %s", self.name, message.message_id)

    def origin(self, message: AbstractIncomingMessage) -> tuple[str, str]:
        """(verified publisher, routing key) of the event as first published.

        A delivery's own ``user_id`` and routing key, except on a copy this service's own login sent
        through the default exchange (a retry back from its delay queue, or an operator requeueing
        with this service's credentials): then the headers it wrote on that copy. Anyone else's
        headers of that name are ignored.
        """
        user, key = message.user_id or "", message.routing_key or ""
        if user != self._login or message.exchange != "":
            return user, key
        headers = message.headers or {}
        return text(headers.get(PUBLISHER_HEADER)) or user, text(headers.get(ROUTING_KEY_HEADER)) or key

    async def _republish(self, message: AbstractIncomingMessage, queue_name: str, extra: dict[str, Any]) -> bool:
        """Send the original body to ``queue_name`` (default exchange), confirmed, then ack the original.

        The copy is published as this service (its own ``user_id``); who published the original, and
        with which routing key, travel in headers that only this service believes (:meth:`origin`).
        """
        publisher, routing_key = self.origin(message)
        headers = {**dict(message.headers or {}), PUBLISHER_HEADER: publisher, ROUTING_KEY_HEADER: routing_key,
                   **extra}
        out = aio_pika.Message(
            message.body,
            headers=headers,
            message_id=message.message_id,
            content_type=message.content_type,
            correlation_id=message.correlation_id,
            type=message.type,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        try:
            await self._publisher.send_to_queue(out, queue_name)
        except PublishError as exc:
            log.error("service %s: could not move message to %s (%s); returning it to the queue",
                      self.name, queue_name, exc)
            await safe_nack(message)
            return False
        await message.ack()
        return True


async def safe_nack(message: AbstractIncomingMessage) -> None:
    try:
        await message.nack(requeue=True)
    except Exception as exc:  # channel gone: the broker requeues unacked messages itself
        log.debug("nack failed: %r", exc)


def text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return value if isinstance(value, str) else ""
