"""The consumer runtime: one quorum queue per service, handlers by event type, retry, park.

For each delivery: parse the envelope and validate its data (malformed → parked at once,
with the reason); skip an event this service already handled (idempotency store); run
the one handler registered for its type; on success mark it handled and ack. A handler
that raises is retried through the delay tiers, then parked. The message is acked only
after its retry copy or parked copy is confirmed by the broker, so nothing is lost; if
that publish fails the message is returned to the queue instead.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import traceback
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection

from bus.envelope import Envelope, EnvelopeError
from bus.events import Event
from bus.handling import Emitter, Handler, Incoming, child_envelope
from bus.idempotency import ProcessedStore
from bus.provenance import Provenance
from bus.publisher import REPLAYED_HEADER, AsyncPublisher, PublishError
from bus.registry import DEFAULT_REGISTRY, Registry
from bus.topology import ServiceQueue, Topology, declare_service

log = logging.getLogger(__name__)

ATTEMPT_HEADER = "x-hotupdate-attempt"
REASON_HEADER = "x-hotupdate-park-reason"
HandlerTable = Mapping[type[Event], Handler]


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


class _ChildEmitter:
    """Publishes events caused by ``parent``; offsets number them in the order they are emitted."""

    def __init__(self, parent: Envelope, source: str, publisher: AsyncPublisher) -> None:
        self._parent = parent
        self._source = source
        self._publisher = publisher
        self._offset = 0
        self.emitted: list[Envelope] = []

    async def emit(self, event: Event, *, key: str = "", subject: str | None = None) -> Envelope:
        self._offset += 1
        env = child_envelope(
            self._parent, event, source=self._source, offset=self._offset, key=key, subject=subject
        )
        await self._publisher.publish(env)
        self.emitted.append(env)
        return env


class ConsumerService:
    """A long-running consumer of one service queue; see the module docstring for the guarantees."""

    def __init__(
        self,
        *,
        amqp_url: str,
        queue: ServiceQueue,
        handlers: HandlerTable,
        source: str,
        topology: Topology | None = None,
        processed: ProcessedStore | None = None,
        prefetch: int = 10,
        registry: Registry = DEFAULT_REGISTRY,
        on_reject: RejectHook | None = None,
        accept_replayed: bool = False,
        provenance: Provenance | None = None,
    ) -> None:
        self._url = amqp_url
        self._spec = queue
        self._handlers = dict(handlers)
        self._source = source
        self._topology = topology or Topology()
        self._processed = processed
        self._prefetch = prefetch
        self._registry = registry
        self._on_reject = on_reject
        self._accept_replayed = accept_replayed
        self._provenance = provenance
        self._connection: AbstractRobustConnection | None = None
        self._publisher = AsyncPublisher(amqp_url, self._topology)
        self._consumer_tag: str | None = None
        self._queue: Any = None
        self._in_flight: set[asyncio.Task[Any]] = set()
        self.handled = 0
        self.parked = 0

    @property
    def name(self) -> str:
        return self._spec.service

    @property
    def spec(self) -> ServiceQueue:
        """The queue this service consumes, with its bindings (declare it before publishing in tests)."""
        return self._spec

    @property
    def started(self) -> bool:
        """True once the queue is declared, bound and consumed."""
        return self._consumer_tag is not None

    async def start(self) -> None:
        """Declare the service's topology and start consuming."""
        self._connection = await aio_pika.connect_robust(self._url)
        channel = await self._connection.channel()
        await channel.set_qos(prefetch_count=self._prefetch)
        self._queue, _ = await declare_service(channel, self._topology, self._spec)
        await self._publisher.connect()
        self._consumer_tag = await self._queue.consume(self._on_message)
        log.info("service %s consuming %s bound to %s", self.name, self._queue.name, ", ".join(self._spec.bindings))

    async def stop(self, timeout: float = 60.0) -> None:
        """Stop taking messages, let in-flight handlers finish (up to ``timeout``), then disconnect."""
        if self._queue is not None and self._consumer_tag is not None:
            try:
                await self._queue.cancel(self._consumer_tag)
            except Exception as exc:  # the channel may already be gone; unacked messages return anyway
                log.debug("cancel of %s failed: %r", self.name, exc)
            self._consumer_tag = None
        if self._in_flight:
            await asyncio.wait(set(self._in_flight), timeout=timeout)
        await self._publisher.close()
        if self._connection is not None:
            await self._connection.close()
            self._connection = None
        log.info("service %s stopped (handled %d, parked %d)", self.name, self.handled, self.parked)

    async def run_until(self, stop: asyncio.Event) -> None:
        await self.start()
        try:
            await stop.wait()
        finally:
            await self.stop()

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._in_flight.add(task)
        try:
            await self._process(message)
        except Exception:  # never let one message take the consumer down
            log.exception("service %s: unexpected failure on message %s", self.name, message.message_id)
            await _safe_nack(message)
        finally:
            if task is not None:
                self._in_flight.discard(task)

    async def _process(self, message: AbstractIncomingMessage) -> None:
        headers = dict(message.headers or {})
        attempt = _as_int(headers.get(ATTEMPT_HEADER), 1)
        try:
            envelope = Envelope.from_bytes(message.body)
            event = self._registry.decode(envelope)
        except EnvelopeError as exc:
            await self._park(message, f"malformed: {exc}", attempt)
            return
        if self._provenance is not None and (problem := self._provenance.problem(envelope)):
            await self._park(message, problem, attempt)
            return
        replayed = bool(headers.get(REPLAYED_HEADER))
        handler = self._handlers.get(type(event))
        if handler is None or (replayed and not self._accept_replayed):
            await message.ack()  # not ours to handle: bound by a wider pattern, or a replay
            return
        if self._processed is not None and await self._processed.aseen(envelope.id):
            log.info("service %s: %s %s already handled; acking redelivery", self.name, envelope.type, envelope.id)
            await message.ack()
            return
        emitter = _ChildEmitter(envelope, self._source, self._publisher)
        incoming = Incoming(envelope, event, redelivered=bool(message.redelivered), replayed=replayed)
        try:
            await handler(incoming, emitter)
        except Reject as exc:
            await self._park(message, f"rejected by handler: {exc}", attempt)
            return
        except Exception as exc:
            await self._retry_or_park(message, envelope, exc, attempt)
            return
        if self._processed is not None:
            await self._processed.amark(envelope.id, envelope.type)
        await message.ack()
        self.handled += 1
        log.info(
            "handled %s id=%s update=%s emitted=%d service=%s",
            envelope.type, envelope.id, envelope.updateid, len(emitter.emitted), self.name,
        )

    async def _retry_or_park(
        self, message: AbstractIncomingMessage, envelope: Envelope, exc: Exception, attempt: int
    ) -> None:
        detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        delays = self._spec.retry_delays_ms
        if attempt > len(delays):
            await self._park(message, f"handler failed after {attempt} attempts: {detail}", attempt)
            return
        delay = delays[attempt - 1]
        log.warning(
            "service %s: %s %s failed (attempt %d): %s; retrying in %d ms",
            self.name, envelope.type, envelope.id, attempt, detail, delay,
        )
        await self._republish(
            message, self._topology.delay_queue(self.name, delay), {ATTEMPT_HEADER: attempt + 1,
                                                                     "x-hotupdate-last-error": detail[:1000]}
        )

    async def _park(self, message: AbstractIncomingMessage, reason: str, attempt: int) -> None:
        parked_at = datetime.now(UTC)
        log.warning("service %s: parking message %s: %s", self.name, message.message_id, reason)
        parked = await self._republish(
            message,
            self._topology.parking_queue(self.name),
            {
                REASON_HEADER: reason[:4000],
                "x-hotupdate-parked-at": parked_at.isoformat(),
                "x-hotupdate-parked-by": self.name,
                "x-hotupdate-original-routing-key": message.routing_key or "",
                ATTEMPT_HEADER: attempt,
            },
        )
        if not parked:
            return
        self.parked += 1
        if self._on_reject is not None:
            # After the parked copy is confirmed: the hook only records; if it fails, the
            # message is safe in the parking queue all the same.
            try:
                await self._on_reject(
                    Rejection(self.name, reason, message.body, message.routing_key or "",
                              message.message_id, attempt, parked_at)
                )
            except Exception:
                log.exception("service %s: on_reject hook failed for %s", self.name, message.message_id)

    async def _republish(self, message: AbstractIncomingMessage, queue_name: str, extra: dict[str, Any]) -> bool:
        """Send the original body to ``queue_name`` (default exchange), confirmed, then ack the original."""
        headers = {**dict(message.headers or {}), **extra}
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
            await _safe_nack(message)
            return False
        await message.ack()
        return True


async def _safe_nack(message: AbstractIncomingMessage) -> None:
    try:
        await message.nack(requeue=True)
    except Exception as exc:  # channel gone: the broker requeues unacked messages itself
        log.debug("nack failed: %r", exc)


def _as_int(value: object, default: int) -> int:
    if isinstance(value, int | str | bytes):
        try:
            return int(value)
        except ValueError:
            return default
    return default


async def serve(*services: ConsumerService, stop: asyncio.Event | None = None) -> None:
    """Run services until SIGTERM/SIGINT (or ``stop``): in-flight work finishes, then they close."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        for service in services:
            await service.start()
        await stop.wait()
    finally:
        for service in services:
            await service.stop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


__all__ = ["ConsumerService", "Emitter", "HandlerTable", "Incoming", "Reject", "Rejection", "serve"]
