"""The CMDB's composition root: builds the database, API, outbox relay and process-manager consumer once.

Nothing here runs anything; :mod:`producers.cmdb.app` runs what this builds, in one process.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from fastapi import FastAPI

from bus.consumer import ConsumerService, HandlerTable
from bus.contract.events import TEAM_PRODUCER, Event
from bus.handling import Emitter, Handler, Incoming
from bus.id_keys import id_key_from_url
from bus.idempotency import ProcessedStore
from bus.identity import identity_from_config
from bus.publisher import AsyncPublisher
from bus.topology import ServiceQueue, Topology, binding, topology_for
from bus.wiring import inject
from domain.config import HotupdateConfig
from producers.cmdb import observability
from producers.cmdb.api import create_app
from producers.cmdb.database import CmdbDatabase
from producers.cmdb.outbox import OutboxRelay
from producers.cmdb.process_manager import HANDLERS
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
    """The CMDB's queue, bound to every event it reacts to, of every project."""
    return ServiceQueue(service=SERVICE, bindings=tuple(binding(event) for event in HANDLERS))


def handler_table(database: CmdbDatabase, config: HotupdateConfig) -> HandlerTable:
    """The CMDB's handlers bound to their dependencies and run off the event loop. A component's
    event is first checked to come from the update's own receiver or ops manager
    (:mod:`producers.cmdb.senders`); a team's event (an announcement, a verdict) answers to no
    update's sender, and who may send it at all is the identity table's (``broker.teams``), checked before."""
    senders = Senders(config, database)
    dependencies = {"database": database, "config": config}
    return {
        event: _in_thread(inject(handler, dependencies), None if event.producer == TEAM_PRODUCER else senders)
        for event, handler in HANDLERS.items()
    }


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
    topology = topology or topology_for(config)
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


def _in_thread(handler: Callable[[Incoming[Event]], None], senders: Senders | None) -> Handler:
    # The handlers use the synchronous database API; a thread keeps the consumer's loop free.
    def checked(msg: Incoming[Event]) -> None:
        if senders is not None:
            senders.check(msg.envelope, msg.publisher)
        handler(msg)

    async def handle(msg: Incoming[Event], _emit: Emitter) -> None:
        await asyncio.to_thread(checked, msg)

    return handle
