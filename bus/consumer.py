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

Retry and parked copies are published by this service itself (so their ``user_id`` is its own
login; RabbitMQ would refuse the original's): they carry the original's verified publisher and
routing key in headers, which are believed only on a copy from this service's own login
through the default exchange, i.e. one that came back from its own delay queue.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
import traceback
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection

from bus import tracing
from bus.connection import connect_robust
from bus.envelope import Envelope, EnvelopeError
from bus.events import Event
from bus.handling import Emitter, Handler, Incoming, child_envelope
from bus.id_keys import id_key_from_url
from bus.idempotency import ProcessedStore
from bus.identity import Identity
from bus.metrics import BATCH_SECONDS, ConsumerMetrics
from bus.publisher import REPLAYED_HEADER, AsyncPublisher, PublishError
from bus.queue_stats import QueueStats, queue_stats
from bus.registry import DEFAULT_REGISTRY, Registry
from bus.topology import ServiceQueue, Topology, declare_service

log = logging.getLogger(__name__)

ATTEMPT_HEADER = "x-hotupdate-attempt"
REASON_HEADER = "x-hotupdate-park-reason"
# On retry and parked copies: who published the original (as the broker verified it), and with which routing key.
PUBLISHER_HEADER = "x-hotupdate-publisher"
ROUTING_KEY_HEADER = "x-hotupdate-original-routing-key"
# How long stop() waits for the broker to confirm the consumer is cancelled (it is gone with the connection anyway).
CANCEL_SECONDS = 5.0
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
# One result per event, in order: None if it was handled, else the exception it failed with.
BatchHandler = Callable[[Sequence[Incoming[Event]]], Awaitable[Sequence[Exception | None]]]


@dataclass(frozen=True)
class _Delivery:
    message: AbstractIncomingMessage
    incoming: Incoming[Event]
    attempt: int


class Reject(Exception):
    """Raised by a handler for an event that can never succeed: parked at once, without retries."""


class Conflict(Reject):
    """A known event id arrived with different content: parked at once, its message (``conflict: …``) the reason.

    Never an "already handled": an operator must see that two different events claim one id.
    """


def _rejected_reason(exc: Reject) -> str:
    return str(exc) if isinstance(exc, Conflict) else f"rejected by handler: {exc}"


class _ChildEmitter:
    """Publishes events caused by ``parent``; offsets number them in the order they are emitted."""

    def __init__(self, parent: Envelope, source: str, publisher: AsyncPublisher, id_key: bytes | None = None) -> None:
        self._parent = parent
        self._source = source
        self._publisher = publisher
        self._id_key = id_key
        self._offset = 0
        self.emitted: list[Envelope] = []

    async def emit(self, event: Event, *, key: str = "", subject: str | None = None) -> Envelope:
        self._offset += 1
        env = child_envelope(
            self._parent, event, source=self._source, offset=self._offset, key=key, subject=subject,
            id_key=self._id_key,
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
        self._max_batch = max(1, max_batch)
        self._linger = batch_linger_seconds
        self._batch_depth = max(1, batch_depth)
        self._gathered: list[_Delivery] = []
        self._gathering = asyncio.Event()  # something was gathered (or the service is stopping)
        self._full = asyncio.Event()  # a whole batch is gathered
        self._batcher: asyncio.Task[None] | None = None
        self._stopping = False  # no more deliveries will be gathered: the batcher ends when it has none
        # Delivery tags not yet acked, nacked or moved, per channel: a multiple ack must not cover any of them.
        self._unacked: dict[int, set[int]] = {}
        self.handled = 0
        self.parked = 0
        self.batches = 0
        self._metrics = ConsumerMetrics(queue.service, enabled=metrics)  # bus/metrics.py: the counters

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
        if self._batch_handler is not None:
            self._stopping = False
            self._gathering, self._full = asyncio.Event(), asyncio.Event()  # of this start's event loop
            self._batcher = asyncio.get_running_loop().create_task(self._run_batches(), name=f"{self.name}-batches")
        self._consumer_tag = await self._queue.consume(self._on_message)
        log.info("service %s consuming %s bound to %s", self.name, self._queue.name, ", ".join(self._spec.bindings))

    async def stop(self, timeout: float = 60.0) -> None:
        """Stop taking messages, let in-flight handlers finish (up to ``timeout``), then disconnect."""
        await self._cancel_consumer()
        if self._in_flight:
            await asyncio.wait(set(self._in_flight), timeout=timeout)
        if self._batcher is not None:  # what was gathered goes in its batches, then the batcher ends
            self._stopping = True
            self._gathering.set()
            self._full.set()
            await asyncio.wait({self._batcher}, timeout=timeout)
            self._batcher = None
        await self._publisher.close()
        if self._connection is not None:
            await self._connection.close()
            self._connection = None
        log.info("service %s stopped (handled %d, parked %d)", self.name, self.handled, self.parked)

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
        unacked = self._unacked.setdefault(_channel_key(message), set()) if self._batch_handler else None
        if unacked is not None and message.delivery_tag is not None:
            unacked.add(message.delivery_tag)
        gathered = False
        try:
            gathered = await self._process(message)
        except Exception:  # never let one message take the consumer down
            log.exception("service %s: unexpected failure on message %s", self.name, message.message_id)
            await _safe_nack(message)
        finally:
            if task is not None:
                self._in_flight.discard(task)
            if unacked is not None and not gathered:  # done with here: acked, moved or returned
                unacked.discard(message.delivery_tag or 0)

    async def _process(self, message: AbstractIncomingMessage) -> bool:
        """Handle one delivery, or gather it for the next batch (then return True)."""
        headers = dict(message.headers or {})
        attempt = _as_int(headers.get(ATTEMPT_HEADER), 1)
        try:
            envelope = Envelope.from_bytes(message.body)
            event = self._registry.decode(envelope)
        except EnvelopeError as exc:
            self._metrics.consumed("malformed")
            await self._park(message, f"malformed: {exc}", attempt)
            return False
        event_name = envelope.event_name
        self._metrics.consumed(event_name)
        publisher, routing_key = self._origin(message)
        if envelope.routing_key != routing_key:
            await self._park(message, f"routing: the envelope ({envelope.type} for project {envelope.project!r}, "
                                      f"area {envelope.area!r}) belongs on routing key {envelope.routing_key!r} "
                                      f"but was published with {routing_key!r}", attempt, event_name)
            return False
        replayed = bool(headers.get(REPLAYED_HEADER))
        handler = self._handlers.get(type(event))
        if handler is None or (replayed and not self._accept_replayed):
            await message.ack()  # not ours to handle: bound by a wider pattern, or a replay
            return False
        if self._identity is not None and (problem := self._identity.problem(envelope, publisher)):
            await self._park(message, problem, attempt, event_name)
            return False
        if self._processed is not None and (known := await self._processed.ahandled(envelope.id)) is not None:
            if conflict := known.conflict(envelope, publisher):
                await self._park(message, conflict, attempt, event_name)  # two events claim one id: an operator decides
                return False
            log.info("service %s: %s %s already handled; acking redelivery", self.name, envelope.type, envelope.id)
            await message.ack()
            return False
        incoming = Incoming(envelope, event, redelivered=bool(message.redelivered), replayed=replayed,
                            body=message.body, publisher=publisher)
        if self._batch_handler is not None:
            self._gathered.append(_Delivery(message, incoming, attempt))
            self._gathering.set()
            if len(self._gathered) >= self._max_batch:
                self._full.set()
            return True
        emitter = _ChildEmitter(envelope, self._source, self._publisher, self.id_key)
        began = time.perf_counter()
        try:
            with tracing.handling(envelope, self.name):  # emitted events carry this span's trace context
                await handler(incoming, emitter)
        except Reject as exc:
            self._metrics.failed(event_name, time.perf_counter() - began)
            await self._park(message, _rejected_reason(exc), attempt, event_name)
            return False
        except Exception as exc:
            self._metrics.failed(event_name, time.perf_counter() - began)
            await self._retry_or_park(message, envelope, exc, attempt)
            return False
        if self._processed is not None:
            await self._processed.amark_envelope(envelope, incoming.publisher)
        await message.ack()
        self.handled += 1
        self._metrics.handled(event_name, time.perf_counter() - began)
        log.info(
            "handled %s id=%s update=%s emitted=%d service=%s",
            envelope.type, envelope.id, envelope.updateid, len(emitter.emitted), self.name,
        )
        return False

    async def _run_batches(self) -> None:
        """Hand gathered deliveries to the batch handler, up to ``batch_depth`` batches at once."""
        slots = asyncio.Semaphore(self._batch_depth)
        running: set[asyncio.Task[None]] = set()
        while True:
            await slots.acquire()  # while every slot is busy, what arrives makes the next batch bigger
            await self._gathering.wait()
            if running and not self._stopping and len(self._gathered) < self._max_batch:
                # Another batch is being handled: hand this one over when it is full or when that one is
                # done, not before: the handler would only queue it, and a bigger batch is cheaper per event.
                full = asyncio.get_running_loop().create_task(self._full.wait())
                await asyncio.wait({full, *running}, return_when=asyncio.FIRST_COMPLETED)
                full.cancel()
            elif self._linger > 0 and not self._stopping and len(self._gathered) < self._max_batch:
                await asyncio.sleep(self._linger)  # let the rest of a prefetched burst arrive
            batch, self._gathered = self._gathered[:self._max_batch], self._gathered[self._max_batch:]
            if len(self._gathered) < self._max_batch:
                self._full.clear()
            if not self._gathered and not self._stopping:
                self._gathering.clear()
            if not batch:
                slots.release()
                if self._stopping:  # and nothing is left
                    break
                continue
            task = asyncio.get_running_loop().create_task(self._handle_batch(batch))
            running.add(task)
            task.add_done_callback(running.discard)
            task.add_done_callback(lambda _: slots.release())
        if running:
            await asyncio.wait(running)

    async def _handle_batch(self, batch: list[_Delivery]) -> None:
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
        if self._metrics.enabled:
            BATCH_SECONDS.labels(service=self.name).observe(time.perf_counter() - began)
        done: list[_Delivery] = []
        for delivery, result in zip(batch, results, strict=True):
            message, envelope = delivery.message, delivery.incoming.envelope
            try:
                if result is None:
                    done.append(delivery)
                elif isinstance(result, Reject):
                    await self._park(message, _rejected_reason(result), delivery.attempt, envelope.event_name)
                else:
                    await self._retry_or_park(message, envelope, result, delivery.attempt)
            except Exception:
                log.exception("service %s: unexpected failure on message %s", self.name, message.message_id)
                await _safe_nack(message)
            if result is not None:
                self._settled(message)
        if self._processed is not None:
            try:
                for delivery in done:
                    await self._processed.amark_envelope(delivery.incoming.envelope, delivery.incoming.publisher)
            except Exception:  # as for a single handler: returned to the queue, handled again
                log.exception("service %s: could not mark a batch of %d handled", self.name, len(done))
                for delivery in done:
                    await _safe_nack(delivery.message)
                    self._settled(delivery.message)
                return
        await self._ack_all([d.message for d in done])  # after the retries and parks: they are not covered
        self.handled += len(done)
        self._metrics.handled_batch([d.incoming.envelope.event_name for d in done])
        log.info("service %s: batch of %d handled, %d to retry or park", self.name, len(batch),
                 len(batch) - len(done))

    async def _ack_all(self, messages: list[AbstractIncomingMessage]) -> None:
        """Ack ``messages``: with one multiple ack per channel where that covers nothing else."""
        by_channel: dict[int, list[AbstractIncomingMessage]] = {}
        for message in messages:
            by_channel.setdefault(_channel_key(message), []).append(message)
        for channel, group in by_channel.items():
            unacked = self._unacked.get(channel, set())
            tags = {m.delivery_tag for m in group}
            last = max(group, key=lambda m: m.delivery_tag or 0)
            top = last.delivery_tag or 0
            contiguous = all(tag in tags for tag in unacked if tag <= top)
            try:
                if contiguous and len(group) > 1:
                    await last.ack(multiple=True)
                else:
                    for message in group:
                        await message.ack()
            except Exception as exc:  # channel gone: the broker redelivers, and handlers are idempotent
                log.warning("service %s: ack of %d messages failed: %r", self.name, len(group), exc)
            unacked.difference_update(tags)

    def _settled(self, message: AbstractIncomingMessage) -> None:
        unacked = self._unacked.get(_channel_key(message))
        if unacked is not None:
            unacked.discard(message.delivery_tag or 0)

    async def _retry_or_park(
        self, message: AbstractIncomingMessage, envelope: Envelope, exc: Exception, attempt: int
    ) -> None:
        detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        delays = self._spec.retry_delays_ms
        if attempt > len(delays):
            await self._park(message, f"handler failed after {attempt} attempts: {detail}", attempt,
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

    async def _park(self, message: AbstractIncomingMessage, reason: str, attempt: int,
                    event_name: str = "malformed") -> None:
        parked_at = datetime.now(UTC)
        log.warning("service %s: parking message %s: %s", self.name, message.message_id, reason)
        _, routing_key = self._origin(message)
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

    def _origin(self, message: AbstractIncomingMessage) -> tuple[str, str]:
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
        return _text(headers.get(PUBLISHER_HEADER)) or user, _text(headers.get(ROUTING_KEY_HEADER)) or key

    async def _republish(self, message: AbstractIncomingMessage, queue_name: str, extra: dict[str, Any]) -> bool:
        """Send the original body to ``queue_name`` (default exchange), confirmed, then ack the original.

        The copy is published as this service (its own ``user_id``); who published the original, and
        with which routing key, travel in headers that only this service believes (:meth:`_origin`).
        """
        publisher, routing_key = self._origin(message)
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
            await _safe_nack(message)
            return False
        await message.ack()
        return True


async def _safe_nack(message: AbstractIncomingMessage) -> None:
    try:
        await message.nack(requeue=True)
    except Exception as exc:  # channel gone: the broker requeues unacked messages itself
        log.debug("nack failed: %r", exc)


def _channel_key(message: AbstractIncomingMessage) -> int:
    """Which channel a delivery came on (delivery tags count per channel); -1 once that channel is closed."""
    try:
        return id(message.channel)
    except Exception:  # aio-pika raises for a closed channel: its unacked deliveries go back to the queue
        return -1


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return value if isinstance(value, str) else ""


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
