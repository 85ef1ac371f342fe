"""The CMDB's composition root: builds the database, API, outbox relay and process-manager consumer once.

Nothing here runs anything; :mod:`producers.cmdb.app` runs what this builds, in one process.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import cast

from fastapi import FastAPI

from bus.consumer import ConsumerService, HandlerTable
from bus.events import AnalysisVerdict, Event, ReleaseAnnounced
from bus.handling import Emitter, Handler, Incoming
from bus.id_keys import id_key_from_url
from bus.idempotency import ProcessedStore
from bus.identity import identity_from_config
from bus.publisher import AsyncPublisher
from bus.topology import ServiceQueue, Topology, binding
from domain.config import HotupdateConfig
from producers.cmdb import observability
from producers.cmdb.analysis import on_analysis_verdict
from producers.cmdb.api import create_app
from producers.cmdb.database import CmdbDatabase
from producers.cmdb.outbox import OutboxRelay
from producers.cmdb.process_manager import HANDLERS, PmHandler
from producers.cmdb.releases import on_release_announced
from producers.cmdb.senders import Senders
from producers.cmdb.service import SOURCE

SERVICE = "cmdb"


@dataclass
class CmdbRuntime:
    """Everything the CMDB process runs, wired together."""

    config: HotupdateConfig
    database: CmdbDatabase
    api: FastAPI
    publisher: AsyncPublisher
    relay: OutboxRelay
    consumer: ConsumerService
    consumer_started: asyncio.Event = field(default_factory=asyncio.Event)  # set once the broker was reached


def cmdb_queue() -> ServiceQueue:
    """The CMDB's queue, bound to every event its process manager reacts to, and to announced releases,
    of every project."""
    return ServiceQueue(service=SERVICE, bindings=(
        *(binding(event) for event in HANDLERS), binding(ReleaseAnnounced), binding(AnalysisVerdict)))


def handler_table(database: CmdbDatabase, config: HotupdateConfig) -> HandlerTable:
    """The process manager's handlers, bound to the database and run off the event loop, each after
    the check that the update's receiver or ops manager sent the event (:mod:`producers.cmdb.senders`)."""
    senders = Senders(config, database)
    table: dict[type[Event], Handler] = {
        event: _in_thread(handler, database, senders) for event, handler in HANDLERS.items()
    }
    # A team's announcement: who may send it is the identity table's (broker.teams), checked before.
    table[ReleaseAnnounced] = _release_handler(database, config)
    table[AnalysisVerdict] = _verdict_handler(database)
    return table


def bootstrap(
    config: HotupdateConfig,
    database_url: str | None = None,
    *,
    amqp_url: str | None = None,
    topology: Topology | None = None,
    poll_seconds: float = 0.2,
    publish_retry_seconds: float = 5.0,
) -> CmdbRuntime:
    """Open (and migrate) the database and build the API, relay and consumer around it."""
    url = database_url or config.cmdb.database_url
    broker = amqp_url or config.amqp_url
    topology = topology or Topology()
    database = CmdbDatabase(url, id_key=id_key_from_url(broker))
    # The relay retries on its own; the publisher gives up early so a stop is not held up.
    publisher = AsyncPublisher(broker, topology, retry_seconds=publish_retry_seconds)
    relay = OutboxRelay(database, publisher, poll_seconds=poll_seconds)
    database.after_outbox_commit.append(relay.wake)
    consumer = ConsumerService(
        amqp_url=broker,
        topology=topology,
        queue=cmdb_queue(),
        handlers=handler_table(database, config),
        source=SOURCE,
        processed=ProcessedStore(url, SERVICE),
        identity=identity_from_config(config),
    )
    api = create_app(config, database=database)
    observability.install(api, config, database, consumer, topology)  # /readyz, /metrics, request spans
    return CmdbRuntime(
        config=config,
        database=database,
        api=api,
        publisher=publisher,
        relay=relay,
        consumer=consumer,
    )


def _release_handler(database: CmdbDatabase, config: HotupdateConfig) -> Handler:
    async def handle(msg: Incoming[Event], _emit: Emitter) -> None:
        await asyncio.to_thread(on_release_announced, cast(Incoming[ReleaseAnnounced], msg), database, config)

    return handle


def _verdict_handler(database: CmdbDatabase) -> Handler:
    async def handle(msg: Incoming[Event], _emit: Emitter) -> None:
        await asyncio.to_thread(on_analysis_verdict, cast(Incoming[AnalysisVerdict], msg), database)

    return handle


def _in_thread(handler: PmHandler, database: CmdbDatabase, senders: Senders) -> Handler:
    # The handlers use the synchronous database API; a thread keeps the consumer's loop free.
    def checked(msg: Incoming[Event]) -> None:
        senders.check(msg.envelope, msg.publisher)
        handler(msg, database)

    async def handle(msg: Incoming[Event], _emit: Emitter) -> None:
        await asyncio.to_thread(checked, msg)

    return handle
