"""The projection's composition root: a consumer of every event (``#``) that logs and projects them.

The bus runtime gathers the deliveries into batches (``batch_handler``: up to ``max_batch``
events, after a 5 ms linger; while one batch commits the next one's messages are already
delivered) and hands each batch to :meth:`Projection.handle_batch`, which ingests it in one
database transaction and returns each event's result; the runtime acks the batch after
that (one multiple ack), retries an event that failed in it through the delay tiers and
then parks it; a parked message reaches :meth:`Projection.on_reject`, which records it for
the dashboard. If the transaction as a whole fails, every event of the batch is retried.

By default the batches are ingested by a worker process of the service's own
(:mod:`projections.ingest.worker`, fed the messages' bytes), so the database work runs on
another core than the event loop instead of taking turns with it for the GIL; with
``ingest_in_worker=False`` they are ingested in a thread of this process.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from sqlalchemy import Engine

from bus.consumer import ConsumerService, Rejection
from bus.contract.events import CATALOGUE, Event
from bus.contract.registry import DEFAULT_REGISTRY
from bus.handling import Emitter, Handler, Incoming
from bus.identity import Identity
from bus.metrics import projection_wrote
from bus.topology import SINGLE_ACTIVE_CONSUMER, ServiceQueue, Topology
from domain.db import make_engine, upgrade
from projections.ingest import ingest_batch, record_rejection
from projections.ingest.worker import IngestWorker

log = logging.getLogger(__name__)

SERVICE = "projection"
SOURCE = "hotupdate/projection"


class Projection:
    """The projection's batch handler and reject hook over one database; its batches are ingested by its
    worker process, or else in a thread of this process."""

    def __init__(self, engine: Engine, *, worker: IngestWorker | None = None) -> None:
        self.engine = engine
        self.worker = worker
        self.batches = 0  # batches ingested
        self._starting: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the worker in the background (needs the running loop); the first batch waits for it."""
        if self.worker is not None and self._starting is None:
            self._starting = asyncio.get_running_loop().create_task(self.worker.start(), name="ingest-worker-start")
            self._starting.add_done_callback(_log_start_failure)

    async def close(self) -> None:
        """Stop the worker once what it was sent is committed (the runtime has finished its batches by then)."""
        if self._starting is not None:
            await asyncio.wait({self._starting})
            self._starting = None
        if self.worker is not None:
            await self.worker.close()

    async def handle_batch(self, batch: Sequence[Incoming[Event]]) -> list[Exception | None]:
        """Log a batch of events and fold it into the view (:func:`projections.ingest.ingest_batch`); each
        event's error, or None.

        Raises if a transaction failed as a whole: the runtime retries the whole batch, and what
        was committed before is found logged and applied (a duplicate, changing nothing).
        """
        publishers = [m.publisher for m in batch]
        if self.worker is not None:
            outcomes = await self.worker.ingest([m.body or m.envelope.to_bytes() for m in batch], publishers)
        else:
            outcomes = await asyncio.to_thread(ingest_batch, self.engine, [(m.envelope, m.event) for m in batch],
                                               publishers=publishers)
        self.batches += 1
        log.debug("projection: batch of %d committed", len(batch))
        written = [m.envelope.time for m, o in zip(batch, outcomes, strict=True) if o.error is None]
        if written:
            projection_wrote(max(written).timestamp())  # hotupdate_projection_lag_seconds counts from it
        return [outcome.error for outcome in outcomes]

    async def handle(self, msg: Incoming[Event], emit: Emitter) -> None:
        """One event on its own (a batch of one): log it and fold it into the view (emits nothing)."""
        (error,) = await self.handle_batch([msg])
        if error is not None:
            raise error

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
    identity: Identity | None = None,
    migrate: bool = True,
    service: str = SERVICE,
    max_batch: int | None = None,
    ingest_in_worker: bool = True,
    single_active_consumer: bool = False,
    metrics: bool = True,
) -> tuple[ConsumerService, Projection]:
    """The projection consumer on its own quorum queue bound to every routing key.

    A batch holds at most ``max_batch`` events (default: half the prefetch), so while one
    batch is being committed the broker has already delivered the next one's messages.
    With ``ingest_in_worker`` (the default) batches go to a worker process started by
    :func:`run`, else to a thread of this process.
    With ``single_active_consumer`` several instances share the queue and one at a time receives
    (in order); the log's head lock keeps the chain whole even if two ever write at once.
    """
    if migrate:
        upgrade(database_url, "projection")
    batch = max_batch if max_batch is not None else max(1, prefetch // 2)
    worker = IngestWorker(database_url) if ingest_in_worker else None
    projection = Projection(make_engine(database_url), worker=worker)
    consumer = ConsumerService(
        amqp_url=amqp_url,
        topology=topology,
        queue=ServiceQueue(service=service, bindings=("#",), retry_delays_ms=retry_delays_ms,
                           extra_arguments=dict(SINGLE_ACTIVE_CONSUMER) if single_active_consumer else {}),
        handlers=projection.handlers(),
        source=SOURCE,
        prefetch=prefetch,
        on_reject=projection.on_reject,
        identity=identity,
        # The projection's own log dedupes, and a replay should not be logged twice.
        accept_replayed=False,
        batch_handler=projection.handle_batch,
        max_batch=batch,
        # Two batches at once: the worker finds the next one in its pipe as soon as it commits one.
        # In a thread, one at a time: two transactions would only wait for each other's lock.
        batch_depth=2 if worker is not None else 1,
        metrics=metrics,  # off only to measure what the counters cost (bench.projection --observability)
    )
    return consumer, projection


async def run(consumer: ConsumerService, projection: Projection, stop: asyncio.Event) -> None:
    """Consume until ``stop``; in-flight batches are committed and acked before the worker and database go."""
    projection.start()
    try:
        await consumer.run_until(stop)
    finally:
        try:
            await projection.close()
        finally:
            projection.engine.dispose()


def _log_start_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("projection: the ingest worker did not start (retried with the next batch): %r", exc)
