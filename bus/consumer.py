"""The consumer runtime: one quorum queue per service, handlers by event type, retry, park.

For each delivery: parse the envelope and validate its data (malformed → parked at once,
with the reason); check that the envelope agrees with the routing key it was published with
and that the broker-verified publisher (the AMQP ``user_id``) may publish it (bus/identity.py;
either failing → parked with the reason); skip an event this service already handled (idempotency store); run
the one handler registered for its type; on success mark it handled and ack. A handler
that raises is retried through the delay tiers, then parked. The message is acked only
after its retry copy or parked copy is confirmed by the broker, so nothing is lost; if
that publish fails the message is returned to the queue instead.

A service may take its events in batches instead (``batch_handler``, the projection's way to
one database transaction per batch): valid deliveries of a handled type are gathered (up to
``max_batch``, after a short linger) and handed over together; the handler returns one result
per event (``None``, or the exception that event failed with). Failed events go through the
same retry and park as above, first; then the rest are acked, with one ``ack(multiple=True)``
when no other delivery of the channel below the batch's last is still unacked (else one by one).
No task or future is kept per message on that path. Everything before dispatch (malformed,
routing, identity, not ours, replays, already processed) is as for single handlers.

Retries and parks are :mod:`bus.redelivery`'s (copies published by this service itself, carrying
the original's verified publisher); gathering batches and acking them, :mod:`bus.batching`'s.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection

from bus import tracing
from bus.batching import AckLedger, Delivery, Gatherer
from bus.connection import connect_robust
from bus.contract.envelope import Envelope, EnvelopeError
from bus.contract.events import Event
from bus.contract.registry import DEFAULT_REGISTRY, Registry
from bus.handling import Emitter, Handler, Incoming
from bus.id_keys import id_key_from_url
from bus.idempotency import ProcessedStore
from bus.identity import Identity
from bus.metrics import BATCH_SECONDS, ConsumerMetrics
from bus.publisher import REPLAYED_HEADER, AsyncPublisher, ChildEmitter
from bus.queue_stats import QueueStats, queue_stats
from bus.redelivery import (
    ATTEMPT_HEADER,
    Conflict,
    Redelivery,
    Reject,
    RejectHook,
    Rejection,
    rejected_reason,
    safe_nack,
)
from bus.topology import ServiceQueue, Topology, declare_service

log = logging.getLogger(__name__)

# How long stop() waits for the broker to confirm the consumer is cancelled (it is gone with the connection anyway).
CANCEL_SECONDS = 5.0
HandlerTable = Mapping[type[Event], Handler]


# One result per event, in order: None if it was handled, else the exception it failed with.
BatchHandler = Callable[[Sequence[Incoming[Event]]], Awaitable[Sequence[Exception | None]]]


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
        identity: Identity | None = None,
        batch_handler: BatchHandler | None = None,
        max_batch: int = 500,
        batch_linger_seconds: float = 0.005,
        batch_depth: int = 2,
        metrics: bool = True,
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
        self._identity = identity
        self._connection: AbstractRobustConnection | None = None
        self._publisher = AsyncPublisher(amqp_url, self._topology)
        # Emitted events' ids are keyed by this service's own broker login: nobody else can predict them.
        self.id_key = id_key_from_url(amqp_url)
        self._login = self._publisher.login
        self._consumer_tag: str | None = None
        self._queue: Any = None
        self._in_flight: set[asyncio.Task[Any]] = set()
        self._batch_handler = batch_handler
        self._gatherer = Gatherer(self._handle_batch, name=queue.service, max_batch=max_batch,
                                  linger_seconds=batch_linger_seconds, depth=batch_depth) if batch_handler else None
        self._acks = AckLedger()
        self.handled = 0
        self.batches = 0
        # bus/metrics.py: the counters (public so a benchmark can switch them off and on mid-run)
        self.metrics = ConsumerMetrics(queue.service, enabled=metrics)
        self._redelivery = Redelivery(spec=queue, topology=self._topology, publisher=self._publisher,
                                      login=self._login, metrics=self.metrics, on_reject=on_reject)

    @property
    def name(self) -> str:
        return self._spec.service

    @property
    def parked(self) -> int:
        """How many deliveries this service parked since it started."""
        return self._redelivery.parked

    @property
    def spec(self) -> ServiceQueue:
        """The queue this service consumes, with its bindings (declare it before publishing in tests)."""
        return self._spec

    @property
    def started(self) -> bool:
        """True once the queue is declared, bound and consumed."""
        return self._consumer_tag is not None

    @property
    def ready(self) -> bool:
        """Consuming, on a connection that is up (a robust connection stays open, not connected, while it retries)."""
        return self.started and self._connection is not None and self._connection.connected.is_set()

    @property
    def connection(self) -> AbstractRobustConnection | None:
        """The service's broker connection while started (for passive declares of other queues)."""
        return self._connection

    async def readiness(self) -> dict[str, bool]:
        """What /readyz reports for this service: consuming on an open connection; its database answering."""
        checks = {f"{self.name}.consumer": self.ready}
        if self._processed is not None:
            try:
                await asyncio.wait_for(self._processed.aseen("readyz-probe"), timeout=5)
                checks[f"{self.name}.database"] = True
            except Exception as exc:
                log.warning("service %s: its database does not answer: %r", self.name, exc)
                checks[f"{self.name}.database"] = False
        return checks

    async def queue_depths(self) -> dict[str, QueueStats | None]:
        """The service's queue and parking queue: ready messages and consumers (passive declares)."""
        if self._connection is None or not self._connection.connected.is_set():
            return {}
        return await queue_stats(self._connection, (self._topology.queue(self.name),
                                                    self._topology.parking_queue(self.name)))

    async def start(self) -> None:
        """Declare the service's topology and start consuming."""
        self._connection = await connect_robust(self._url)
        channel = await self._connection.channel()
        await channel.set_qos(prefetch_count=self._prefetch)
        self._queue, _ = await declare_service(channel, self._topology, self._spec)
        await self._publisher.connect()
        if self._gatherer is not None:
            self._gatherer.start()
        self._consumer_tag = await self._queue.consume(self._on_message)
        log.info("service %s consuming %s bound to %s", self.name, self._queue.name, ", ".join(self._spec.bindings))

    async def stop(self, timeout: float = 60.0) -> None:
        """Stop taking messages, let in-flight handlers finish (up to ``timeout``), then disconnect."""
        await self._cancel_consumer()
        if self._in_flight:
            await asyncio.wait(set(self._in_flight), timeout=timeout)
        if self._gatherer is not None:  # what was gathered goes in its batches, then the gatherer ends
            await self._gatherer.stop(timeout)
        await self._publisher.close()
        if self._connection is not None:
            await self._connection.close()
            self._connection = None
        log.info("service %s stopped (handled %d, parked %d)", self.name, self.handled, self._redelivery.parked)

    async def _cancel_consumer(self) -> None:
        if self._queue is None or self._consumer_tag is None:
            return
        tag, self._consumer_tag = self._consumer_tag, None
        # A robust channel waits for its connection to come back before it cancels: with the
        # connection down (the broker away, or refusing the login after a password change) that
        # wait had no end, and stop() with it. The consumer went with the connection anyway.
        if self._connection is None or not self._connection.connected.is_set():
            log.info("service %s: connection down, its consumer went with it", self.name)
            return
        try:
            await asyncio.wait_for(self._queue.cancel(tag), timeout=CANCEL_SECONDS)
        except Exception as exc:  # the channel may be gone (or going); unacked messages return anyway
            log.debug("cancel of %s failed: %r", self.name, exc)

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
        if self._gatherer is not None:
            self._acks.arrived(message)
        gathered = False
        try:
            gathered = await self._process(message)
        except Exception:  # never let one message take the consumer down
            log.exception("service %s: unexpected failure on message %s", self.name, message.message_id)
            await safe_nack(message)
        finally:
            if task is not None:
                self._in_flight.discard(task)
            if self._gatherer is not None and not gathered:  # done with here: acked, moved or returned
                self._acks.settled(message)

    async def _process(self, message: AbstractIncomingMessage) -> bool:
        """Handle one delivery, or gather it for the next batch (then return True)."""
        headers = dict(message.headers or {})
        attempt = _as_int(headers.get(ATTEMPT_HEADER), 1)
        try:
            envelope = Envelope.from_bytes(message.body)
            event = self._registry.decode(envelope)
        except EnvelopeError as exc:
            self.metrics.consumed("malformed")
            await self._redelivery.park(message, f"malformed: {exc}", attempt)
            return False
        event_name = envelope.event_name
        self.metrics.consumed(event_name)
        publisher, routing_key = self._redelivery.origin(message)
        if envelope.routing_key != routing_key:
            await self._redelivery.park(
                message, f"routing: the envelope ({envelope.type} for project {envelope.project!r}, area "
                f"{envelope.area!r}) belongs on routing key {envelope.routing_key!r} but was published with "
                f"{routing_key!r}", attempt, event_name)
            return False
        replayed = bool(headers.get(REPLAYED_HEADER))
        handler = self._handlers.get(type(event))
        if handler is None or (replayed and not self._accept_replayed):
            await message.ack()  # not ours to handle: bound by a wider pattern, or a replay
            return False
        if self._identity is not None and (problem := self._identity.problem(envelope, publisher)):
            await self._redelivery.park(message, problem, attempt, event_name)
            return False
        if self._processed is not None and (known := await self._processed.ahandled(envelope.id)) is not None:
            if conflict := known.conflict(envelope, publisher):
                # Two events claim one id: an operator decides.
                await self._redelivery.park(message, conflict, attempt, event_name)
                return False
            log.info("service %s: %s %s already handled; acking redelivery", self.name, envelope.type, envelope.id)
            await message.ack()
            return False
        incoming = Incoming(envelope, event, redelivered=bool(message.redelivered), replayed=replayed,
                            body=message.body, publisher=publisher)
        if self._gatherer is not None:
            self._gatherer.add(Delivery(message, incoming, attempt))
            return True
        emitter = ChildEmitter(envelope, self._source, self._publisher, self.id_key)
        began = time.perf_counter()
        try:
            with tracing.handling(envelope, self.name):  # emitted events carry this span's trace context
                await handler(incoming, emitter)
        except Reject as exc:
            self.metrics.failed(event_name, time.perf_counter() - began)
            await self._redelivery.park(message, rejected_reason(exc), attempt, event_name)
            return False
        except Exception as exc:
            self.metrics.failed(event_name, time.perf_counter() - began)
            await self._redelivery.retry_or_park(message, envelope, exc, attempt)
            return False
        if self._processed is not None:
            await self._processed.amark_envelope(envelope, incoming.publisher)
        await message.ack()
        self.handled += 1
        self.metrics.handled(event_name, time.perf_counter() - began)
        log.info(
            "handled %s id=%s update=%s emitted=%d service=%s",
            envelope.type, envelope.id, envelope.updateid, len(emitter.emitted), self.name,
        )
        return False

    async def _handle_batch(self, batch: list[Delivery]) -> None:
        assert self._batch_handler is not None
        began = time.perf_counter()
        try:
            with tracing.handling_batch([d.incoming.envelope for d in batch], self.name):
                results: Sequence[Exception | None] = await self._batch_handler([d.incoming for d in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"batch handler gave {len(results)} results for {len(batch)} events")
        except Exception as exc:  # the batch as a whole failed: every event of it is retried
            results = [exc] * len(batch)
        self.batches += 1
        if self.metrics.enabled:
            BATCH_SECONDS.labels(service=self.name).observe(time.perf_counter() - began)
        done: list[Delivery] = []
        for delivery, result in zip(batch, results, strict=True):
            message, envelope = delivery.message, delivery.incoming.envelope
            try:
                if result is None:
                    done.append(delivery)
                elif isinstance(result, Reject):
                    await self._redelivery.park(message, rejected_reason(result), delivery.attempt, envelope.event_name)
                else:
                    await self._redelivery.retry_or_park(message, envelope, result, delivery.attempt)
            except Exception:
                log.exception("service %s: unexpected failure on message %s", self.name, message.message_id)
                await safe_nack(message)
            if result is not None:
                self._acks.settled(message)
        if self._processed is not None:
            try:
                for delivery in done:
                    await self._processed.amark_envelope(delivery.incoming.envelope, delivery.incoming.publisher)
            except Exception:  # as for a single handler: returned to the queue, handled again
                log.exception("service %s: could not mark a batch of %d handled", self.name, len(done))
                for delivery in done:
                    await safe_nack(delivery.message)
                    self._acks.settled(delivery.message)
                return
        # After the retries and parks, which a multiple ack must not cover.
        await self._acks.ack_all([d.message for d in done], self.name)
        self.handled += len(done)
        self.metrics.handled_batch([d.incoming.envelope.event_name for d in done])
        log.info("service %s: batch of %d handled, %d to retry or park", self.name, len(batch),
                 len(batch) - len(done))


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


__all__ = ["BatchHandler", "Conflict", "ConsumerService", "Emitter", "HandlerTable", "Incoming", "Reject", "Rejection",
           "serve"]
