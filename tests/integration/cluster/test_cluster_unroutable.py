"""The unroutable queue on the cluster: every publisher declares it, a service with the configuration's
quorum settings and the CLI without a configuration alike, so its arguments must not depend on them;
it is replicated on every node and keeps an event nobody was bound for when its leader's node is lost."""

from __future__ import annotations

import asyncio
import json
import time

import pika.exceptions
import pytest

from bus.connection import connect
from bus.contract.events import PullRequested
from bus.contract.examples import EXAMPLES
from bus.contract.registry import make_envelope
from bus.publisher import SyncPublisher
from bus.topology import ServiceQueue, Topology, binding, declare_all
from bus.unroutable import UnroutableQueue
from tests.rabbit_cluster import RabbitCluster

pytestmark = [pytest.mark.rabbit, pytest.mark.slow, pytest.mark.cluster]

CONFIGURED = Topology(quorum_group_size=3, delivery_limit=5)  # a service with broker.quorum_* set
BARE = Topology()  # the CLI without a configuration
SPEC = ServiceQueue(service="cluster_probe", bindings=(binding(PullRequested, project="ssss"),))


async def _drop_exchanges(address: str, topology: Topology) -> None:
    """Delete the shared exchanges (not the queues): the next publisher finds them missing and declares
    them and the unroutable queue again, which is where differing arguments would be refused."""
    connection = await connect(address)
    try:
        channel = await connection.channel()
        for name in (topology.events_exchange, topology.unroutable_exchange, topology.dead_letter_exchange):
            await channel.exchange_delete(name)
    finally:
        await connection.close()


def _members(cluster: RabbitCluster, vhost: str, name: str) -> list[str]:
    out = cluster.ctl("list_queues", "-p", vhost, "--formatter", "json", "name", "members")
    return sorted(next(q for q in json.loads(out) if q["name"] == name)["members"])


def _peek_until(queue: UnroutableQueue, count: int, timeout: float = 60) -> list[str]:
    """The unroutable events' ids, once ``count`` are there (a new leader may take a few seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            ids = [m.message_id for m in queue.peek()]
            if len(ids) >= count:
                return ids
        except (pika.exceptions.AMQPError, OSError):
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"the unroutable queue did not show {count} events in {timeout:.0f}s")
        time.sleep(1)


async def test_a_configured_service_and_the_bare_cli_both_declare_the_unroutable_queue(cluster, cluster_vhost):
    address = cluster.address(cluster_vhost)
    # Each order: whichever declares it first, the other's declaration is the same (no PRECONDITION_FAILED).
    await declare_all(address, BARE)
    await _drop_exchanges(address, BARE)
    await declare_all(address, CONFIGURED, [SPEC])
    await _drop_exchanges(address, BARE)
    envelope = make_envelope(EXAMPLES[0], source="tests", updateid="u-unbound", project="qqqq", area="cn")
    # The pika publisher declares with its own code (bus/publisher.py): the same arguments.
    await asyncio.to_thread(_publish, address, envelope)

    assert _members(cluster, cluster_vhost, BARE.unroutable_queue) == sorted(s.name for s in cluster.slots)
    queue = UnroutableQueue(address, BARE)
    assert await asyncio.to_thread(_peek_until, queue, 1) == [envelope.id]

    # Lose the node holding its leader: the confirmed event is still there, read through another node.
    leader = cluster.index_of(cluster.leaders(cluster_vhost)[BARE.unroutable_queue])
    cluster.kill(leader)
    survivor = UnroutableQueue(cluster.address(cluster_vhost, first=(leader + 1) % len(cluster.slots)), BARE)
    assert await asyncio.to_thread(_peek_until, survivor, 1) == [envelope.id]


def _publish(address: str, envelope) -> None:
    with SyncPublisher(address, BARE, retry_seconds=60) as publisher:
        publisher.publish(envelope)  # confirmed: the alternate exchange took it (no binding for qqqq)
