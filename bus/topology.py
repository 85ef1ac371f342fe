"""Exchange and queue names, by convention, and their idempotent declaration.

Names derive from a namespace (default ``hotupdate``) and the consuming service, so a
queue's name says who consumes it (see events.md, "Topology"):

- ``<ns>.events``              topic exchange, durable; routing key ``<project>.<area>.<event>.v<N>``
- ``<ns>.unroutable``          fanout exchange + quorum queue: the events exchange's alternate exchange
- ``<ns>.dlx``                 direct exchange: dead letters from services' queues
- ``<ns>.<service>``           a service's quorum queue, bound by routing-key patterns
- ``<ns>.<service>.retry.<ms>ms``  delay tier: messages wait ``ms`` then go back to the service queue
- ``<ns>.<service>.parked``    parking queue: malformed messages and those out of tries, with the reason
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractQueue, ExchangeType
from aiormq.exceptions import ChannelNotFoundEntity

from bus.connection import connect
from bus.contract.events import Event
from domain.broker_address import redact, split_broker_urls

if TYPE_CHECKING:
    from domain.config import HotupdateConfig


@dataclass(frozen=True)
class Topology:
    namespace: str = "hotupdate"
    # For a cluster (docs/deploy.md, "Past one of everything"): how many nodes hold a replica of each
    # service's quorum queues (its queue, delay tiers, parking) declared from now on, and how often a
    # message may be delivered before it is parked (overrides each ServiceQueue's own). None leaves the
    # broker's default / the ServiceQueue's. The broker fixes both when a queue is first declared:
    # declaring an existing queue with other values fails with PRECONDITION_FAILED, so an existing
    # deployment changes them with the broker's tools (rabbitmq-queues grow, a policy), not here.
    quorum_group_size: int | None = None
    delivery_limit: int | None = None

    def quorum_arguments(self) -> dict[str, Any]:
        """The arguments of a service's quorum queues (its queue, delay tiers, parking queue)."""
        arguments: dict[str, Any] = {"x-queue-type": "quorum"}
        if self.quorum_group_size is not None:
            arguments["x-quorum-initial-group-size"] = self.quorum_group_size
        return arguments

    @property
    def events_exchange(self) -> str:
        return f"{self.namespace}.events"

    @property
    def unroutable_exchange(self) -> str:
        return f"{self.namespace}.unroutable"

    @property
    def unroutable_queue(self) -> str:
        return f"{self.namespace}.unroutable"

    @property
    def dead_letter_exchange(self) -> str:
        return f"{self.namespace}.dlx"

    def queue(self, service: str) -> str:
        return f"{self.namespace}.{service}"

    def parking_queue(self, service: str) -> str:
        return f"{self.namespace}.{service}.parked"

    def delay_queue(self, service: str, delay_ms: int) -> str:
        return f"{self.namespace}.{service}.retry.{delay_ms}ms"


def topology_for(config: HotupdateConfig, namespace: str = "hotupdate") -> Topology:
    """The topology with the configuration's quorum settings (broker.quorum_group_size, broker.delivery_limit)."""
    return Topology(namespace, quorum_group_size=config.broker.quorum_group_size,
                    delivery_limit=config.broker.delivery_limit)


# Every publisher declares this queue, the CLI's without a configuration too (bus/publisher.py): its
# arguments never vary with the quorum settings, or one declarer would be refused (PRECONDITION_FAILED).
# Its replicas are the broker's default (docs/deploy.md).
UNROUTABLE_ARGUMENTS: dict[str, Any] = {"x-queue-type": "quorum"}
"""The arguments of the unroutable queue, whoever declares it."""

SINGLE_ACTIVE_CONSUMER: dict[str, int | str] = {"x-single-active-consumer": True}
"""A queue whose consumers take turns: one receives everything, the next takes over when it goes."""


@dataclass(frozen=True)
class ServiceQueue:
    """A consuming service's queue: what it binds, how often a message may be tried, how long to wait."""

    service: str
    bindings: tuple[str, ...]
    retry_delays_ms: tuple[int, ...] = (1_000, 5_000, 30_000)
    delivery_limit: int = 20
    extra_arguments: dict[str, int | str] = field(default_factory=dict)

    @property
    def max_attempts(self) -> int:
        """First try plus one per delay tier."""
        return 1 + len(self.retry_delays_ms)


def binding(event: type[Event] | None = None, *, project: str = "*", area: str = "*") -> str:
    """A routing-key pattern: ``binding(PullRequested, project="ssss")`` → ``ssss.*.pull.requested.*``."""
    if event is None:
        return f"{project}.{area}.#"
    return f"{project}.{area}.{event.event_name}.*"


async def declare_exchanges(channel: AbstractChannel, topology: Topology) -> AbstractExchange:
    """Declare the events exchange with its alternate exchange and queue, and the DLX; returns the events one.

    Exchanges that already exist are only looked up (a passive declare needs no permission): a
    component's own broker user may configure its own queues, not the shared exchanges, which
    ``hotupdate rabbitmq provision`` (or ``topology declare``) declares as an administrator.
    """
    try:
        for name in (topology.unroutable_exchange, topology.dead_letter_exchange, topology.events_exchange):
            exchange = await channel.get_exchange(name, ensure=True)
        return exchange
    except ChannelNotFoundEntity:  # a fresh vhost: declare them (the failed lookup closed the channel)
        await channel.reopen()
    unroutable = await channel.declare_exchange(
        topology.unroutable_exchange, ExchangeType.FANOUT, durable=True
    )
    queue = await channel.declare_queue(topology.unroutable_queue, durable=True, arguments=UNROUTABLE_ARGUMENTS)
    await queue.bind(unroutable)
    await channel.declare_exchange(topology.dead_letter_exchange, ExchangeType.DIRECT, durable=True)
    return await channel.declare_exchange(
        topology.events_exchange,
        ExchangeType.TOPIC,
        durable=True,
        arguments={"alternate-exchange": topology.unroutable_exchange},
    )


async def declare_service(
    channel: AbstractChannel, topology: Topology, spec: ServiceQueue
) -> tuple[AbstractQueue, AbstractQueue]:
    """Declare a service's queue, bindings, delay tiers and parking queue; returns (queue, parking)."""
    events = await declare_exchanges(channel, topology)
    dlx = await channel.get_exchange(topology.dead_letter_exchange, ensure=False)
    name = topology.queue(spec.service)
    parking = await channel.declare_queue(
        topology.parking_queue(spec.service), durable=True, arguments=topology.quorum_arguments()
    )
    await parking.bind(dlx, routing_key=parking.name)
    queue = await channel.declare_queue(
        name,
        durable=True,
        arguments={
            **topology.quorum_arguments(),
            # Past the delivery limit (a message that keeps killing its consumer) the
            # broker dead-letters it to the parking queue instead of looping forever.
            "x-delivery-limit": topology.delivery_limit if topology.delivery_limit is not None else spec.delivery_limit,
            "x-dead-letter-exchange": topology.dead_letter_exchange,
            "x-dead-letter-routing-key": parking.name,
            # Quorum queues dead-letter at most once unless told otherwise: a parked
            # message must never be lost on the way.
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
            **spec.extra_arguments,
        },
    )
    for pattern in spec.bindings:
        await queue.bind(events, routing_key=pattern)
    for delay in spec.retry_delays_ms:
        await channel.declare_queue(
            topology.delay_queue(spec.service, delay),
            durable=True,
            arguments={
                **topology.quorum_arguments(),
                "x-message-ttl": delay,
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": name,
                "x-dead-letter-strategy": "at-least-once",
                "x-overflow": "reject-publish",
            },
        )
    return queue, parking


async def declare_all(url: str, topology: Topology, services: list[ServiceQueue] | None = None) -> None:
    """Declare the shared exchanges and the given services' queues (idempotent)."""
    connection = await connect(url)
    try:
        channel = await connection.channel()
        await declare_exchanges(channel, topology)
        for spec in services or []:
            await declare_service(channel, topology, spec)
    finally:
        await connection.close()


async def check_broker(url: str, topology: Topology) -> list[str]:
    """Problems reaching each node of the broker or its exchanges with these credentials (empty when fine)."""
    problems: list[str] = []
    for node in split_broker_urls(url):
        problems += await _check_node(node, topology)
    return problems


async def _check_node(url: str, topology: Topology) -> list[str]:
    try:
        connection = await connect(url, timeout=10)
    except Exception as exc:  # every failure to connect is a finding, not a crash
        return [f"cannot connect to {redact(url)}: {exc!r}"]
    problems: list[str] = []
    try:
        for name in (topology.events_exchange, topology.unroutable_exchange, topology.dead_letter_exchange):
            channel = await connection.channel()
            try:
                await channel.get_exchange(name, ensure=True)
            except Exception as exc:
                problems.append(f"exchange {name}: {exc} (run 'hotupdate topology declare')")
            finally:
                if not channel.is_closed:
                    await channel.close()
    finally:
        await connection.close()
    return problems

