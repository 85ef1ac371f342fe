"""Clients on a three-node RabbitMQ cluster: quorum queues replicated on every node, and a consumer and a
publisher that go on, losing nothing, when the node holding the queue's leader is killed -9."""

from __future__ import annotations

import asyncio
import json

import pytest

from bus.connection import FailoverConnection
from bus.consumer import ConsumerService
from bus.contract.events import PullRequested
from bus.contract.examples import EXAMPLES
from bus.contract.registry import make_envelope
from bus.handling import Emitter, Incoming
from bus.idempotency import ProcessedStore
from bus.publisher import AsyncPublisher
from bus.topology import ServiceQueue, Topology, binding, declare_all
from tests.rabbit_cluster import RabbitCluster
from tests.rabbit_node import free_port

pytestmark = [pytest.mark.rabbit, pytest.mark.slow, pytest.mark.cluster]

TOPOLOGY = Topology(quorum_group_size=3, delivery_limit=5)
SPEC = ServiceQueue(service="cluster_probe", bindings=(binding(PullRequested, project="ssss"),))


def _envelope(updateid: str):
    return make_envelope(EXAMPLES[0], source="tests", updateid=updateid, project="ssss", area="cn")


def _queue_info(cluster: RabbitCluster, vhost: str, name: str) -> dict[str, object]:
    out = cluster.ctl("list_queues", "-p", vhost, "--formatter", "json", "name", "type", "members", "leader",
                      "arguments")
    return next(q for q in json.loads(out) if q["name"] == name)


async def test_every_quorum_queue_has_a_replica_on_each_node_and_the_delivery_limit(cluster, cluster_vhost):
    await declare_all(cluster.address(cluster_vhost), TOPOLOGY, [SPEC])
    names = [TOPOLOGY.queue(SPEC.service), TOPOLOGY.parking_queue(SPEC.service), TOPOLOGY.unroutable_queue,
             TOPOLOGY.delay_queue(SPEC.service, SPEC.retry_delays_ms[0])]
    for name in names:
        info = _queue_info(cluster, cluster_vhost, name)
        assert info["type"] == "quorum"
        assert sorted(info["members"]) == sorted(s.name for s in cluster.slots), name
    arguments = _arguments(_queue_info(cluster, cluster_vhost, TOPOLOGY.queue(SPEC.service))["arguments"])
    assert arguments["x-delivery-limit"] == 5 and arguments["x-quorum-initial-group-size"] == 3


def _arguments(listed: object) -> dict[str, object]:
    """rabbitmqctl's JSON gives queue arguments as a map or as [name, type, value] / [name, value] rows."""
    if isinstance(listed, dict):
        return listed
    assert isinstance(listed, list)
    return {row[0]: row[-1] for row in listed}


async def test_declaring_an_existing_queue_with_other_quorum_settings_is_refused(cluster, cluster_vhost):
    """Why docs/deploy.md changes the settings of an existing deployment by policy, not in the configuration."""
    address = cluster.address(cluster_vhost)
    await declare_all(address, Topology(), [SPEC])
    with pytest.raises(Exception, match="PRECONDITION_FAILED"):
        await declare_all(address, TOPOLOGY, [SPEC])


async def test_a_consumer_and_a_publisher_lose_nothing_when_the_leaders_node_is_killed(cluster, cluster_vhost,
                                                                                        sqlite_url):
    address = cluster.address(cluster_vhost)
    await declare_all(address, TOPOLOGY, [SPEC])
    leader = cluster.index_of(cluster.leaders(cluster_vhost)[TOPOLOGY.queue(SPEC.service)])
    received: list[str] = []
    effects: list[str] = []  # the handler's side effect, guarded by the processed store as services do

    async def handle(msg: Incoming[PullRequested], _emit: Emitter) -> None:
        received.append(msg.envelope.id)
        effects.append(msg.envelope.id)

    processed = ProcessedStore(sqlite_url, SPEC.service)
    # Both clients start on the node that is going to be killed.
    service = ConsumerService(amqp_url=cluster.address(cluster_vhost, first=leader), queue=SPEC,
                              handlers={PullRequested: handle}, source="hotupdate/tests", topology=TOPOLOGY,
                              processed=processed)
    await service.start()
    confirmed: list[str] = []
    try:
        async with AsyncPublisher(cluster.address(cluster_vhost, first=leader), TOPOLOGY,
                                  retry_seconds=90) as publisher:
            for i in range(300):
                if i == 100:
                    cluster.kill(leader)
                envelope = _envelope(f"u-{i}")
                await publisher.publish(envelope)  # returns once confirmed, reconnecting when it must
                confirmed.append(envelope.id)
            assert isinstance(publisher._connection, FailoverConnection)
            assert publisher._connection.node.port != cluster.slots[leader].amqp_port
        for _ in range(600):
            if set(confirmed) <= set(received):
                break
            await asyncio.sleep(0.1)
    finally:
        await service.stop()
        processed.close()
    assert set(confirmed) - set(received) == set(), "confirmed events were lost"
    assert len(effects) == len(set(effects)) == len(confirmed), "a side effect ran twice"
    new_leader = cluster.leaders(cluster_vhost)[TOPOLOGY.queue(SPEC.service)]
    assert new_leader != cluster.slots[leader].name


async def test_a_connection_goes_round_the_list_past_a_node_that_is_also_down(cluster, cluster_vhost):
    first, dead = cluster.url(0, cluster_vhost), f"amqp://guest:guest@127.0.0.1:{free_port()}/{cluster_vhost}"
    address = ",".join([first, dead, cluster.url(1, cluster_vhost)])
    async with AsyncPublisher(address, TOPOLOGY, retry_seconds=60) as publisher:
        await publisher.publish(_envelope("u-before"))
        connection = publisher._connection
        assert isinstance(connection, FailoverConnection) and connection.node.port == cluster.slots[0].amqp_port
        cluster.kill(0)
        await publisher.publish(_envelope("u-after"))  # the dead address is tried, then node 1 of the cluster
        assert connection.node.port == cluster.slots[1].amqp_port
