"""The projection's composition root: a consumer of every event (``#``) that logs and projects them.

The bus runtime hands each delivery to a handler and acks it when the handler returns.
To get one database transaction per batch anyway, every handler call submits its event
to a :class:`BatchingIngestor` and waits: the ingestor takes whatever has queued up
(prefetch bounds it), ingests it in one transaction, and only then releases the waiting
handlers, so each message is acked after its batch committed. An event that failed in
its batch makes its handler raise, and the runtime retries it, then parks it; a parked
message reaches :meth:`Projection.on_reject`, which records it for the dashboard.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from sqlalchemy import Engine

from bus.consumer import ConsumerService, Rejection
from bus.envelope import Envelope
from bus.events import CATALOGUE, Event
from bus.handling import Emitter, Handler, Incoming
from bus.provenance import Provenance
from bus.registry import DEFAULT_REGISTRY
from bus.topology import ServiceQueue, Topology
from domain.db import make_engine, upgrade
from projections.ingest import Outcome, ingest_batch, record_rejection

log = logging.getLogger(__name__)

SERVICE = "projection"
SOURCE = "hotupdate/projection"

Ingest = Callable[[Sequence[tuple[Envelope, Event]]], list[Outcome]]


@dataclass
class _Pending:
    envelope: Envelope
    event: Event
    done: asyncio.Future[Outcome] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class BatchingIngestor:
    """Collects concurrently submitted events into batches, ingested one transaction at a time in a thread."""

    def __init__(self, ingest: Ingest, *, max_batch: int = 200, linger_seconds: float = 0.005) -> None:
        self._ingest = ingest
        self._max_batch = max_batch
        self._linger = linger_seconds
        self._queue: asyncio.Queue[_Pending | None] = asyncio.Queue()  # None: stop after what came before
        self._task: asyncio.Task[None] | None = None
        self.batches = 0

    async def submit(self, envelope: Envelope, event: Event) -> Outcome:
        """Ingest one event as part of the next batch; raise its error if it failed there."""
        if self._task is None:
            self.start()
        pending = _Pending(envelope, event)
        await self._queue.put(pending)
        outcome = await pending.done
        if outcome.error is not None:
            raise outcome.error
        return outcome

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="projection-ingest")

    async def close(self) -> None:
        """Ingest what was submitted before, then stop (callers stop submitting first)."""
        if self._task is None:
            return
        await self._queue.put(None)
        await self._task
        self._task = None

    async def _run(self) -> None:
        stopping = False
        while not stopping:
            first = await self._queue.get()
            if first is None:
                return
            batch = [first]
            if self._linger > 0:  # let the rest of a prefetched burst arrive
                await asyncio.sleep(self._linger)
            while len(batch) < self._max_batch and not self._queue.empty():
                nxt = self._queue.get_nowait()
                if nxt is None:
                    stopping = True
                    break
                batch.append(nxt)
            await self._ingest_and_release(batch)

    async def _ingest_and_release(self, batch: list[_Pending]) -> None:
        try:
            outcomes = await asyncio.to_thread(self._ingest, [(p.envelope, p.event) for p in batch])
        except Exception as exc:  # the transaction failed: nothing of the batch was kept, all retry
            log.warning("projection: batch of %d failed: %r", len(batch), exc)
            for p in batch:
                if not p.done.done():
                    p.done.set_exception(exc)
            return
        self.batches += 1
        for p, outcome in zip(batch, outcomes, strict=True):
            if not p.done.done():
                p.done.set_result(outcome)
        log.debug("projection: batch of %d committed", len(batch))


class Projection:
    """The projection's handlers and reject hook over one database."""

    def __init__(self, engine: Engine, *, max_batch: int = 200) -> None:
        self.engine = engine
        self.ingestor = BatchingIngestor(lambda items: ingest_batch(engine, items), max_batch=max_batch)

    async def handle(self, msg: Incoming[Event], emit: Emitter) -> None:
        """Every event type's handler: log it and fold it into the view (emits nothing)."""
        await self.ingestor.submit(msg.envelope, msg.event)

    async def on_reject(self, rejection: Rejection) -> None:
        """Record a message the runtime is parking, with its reason, for the dashboard's rejected page."""
        await asyncio.to_thread(
            record_rejection,
            self.engine,
            service=rejection.service,
            reason=rejection.reason,
            body=rejection.body,
            routing_key=rejection.routing_key,
            message_id=rejection.message_id,
            attempt=rejection.attempt,
            parked_at=rejection.parked_at,
        )

    def handlers(self) -> dict[type[Event], Handler]:
        """Every event type (its newest model: the runtime upcasts older versions before dispatch)."""
        return {DEFAULT_REGISTRY.latest(model.event_name): self.handle for model in CATALOGUE}


def build_service(
    *,
    amqp_url: str,
    database_url: str,
    topology: Topology | None = None,
    prefetch: int = 100,
    retry_delays_ms: tuple[int, ...] = (1_000, 5_000, 30_000),
    provenance: Provenance | None = None,
    migrate: bool = True,
    service: str = SERVICE,
    max_batch: int | None = None,
) -> tuple[ConsumerService, Projection]:
    """The projection consumer on its own quorum queue bound to every routing key.

    A batch holds at most ``max_batch`` events (default: half the prefetch), so while one
    batch is being committed the broker has already delivered the next one's messages.
    """
    if migrate:
        upgrade(database_url, "projection")
    batch = max_batch if max_batch is not None else max(1, prefetch // 2)
    projection = Projection(make_engine(database_url), max_batch=batch)
    consumer = ConsumerService(
        amqp_url=amqp_url,
        topology=topology,
        queue=ServiceQueue(service=service, bindings=("#",), retry_delays_ms=retry_delays_ms),
        handlers=projection.handlers(),
        source=SOURCE,
        prefetch=prefetch,
        on_reject=projection.on_reject,
        provenance=provenance,
        # The projection's own log dedupes, and a replay should not be logged twice.
        accept_replayed=False,
    )
    return consumer, projection


async def run(consumer: ConsumerService, projection: Projection, stop: asyncio.Event) -> None:
    """Consume until ``stop``; in-flight events finish their batch before the database is let go."""
    projection.ingestor.start()
    try:
        await consumer.run_until(stop)
    finally:
        await projection.ingestor.close()
        projection.engine.dispose()
