"""Two instances of one service on the cluster, sharing its queue and its processed store (PostgreSQL), as two
machines would: both get work, every confirmed event is handled, none twice, also across the loss of the node
holding the queue's leader (neither instance's own node)."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from bus.consumer import ConsumerService
from bus.contract.events import PullRequested
from bus.contract.examples import EXAMPLES
from bus.contract.registry import make_envelope
from bus.handling import Emitter, Incoming
from bus.idempotency import ProcessedStore
from bus.publisher import AsyncPublisher
from bus.topology import ServiceQueue, Topology, binding, declare_all

pytestmark = [pytest.mark.rabbit, pytest.mark.postgres, pytest.mark.slow, pytest.mark.cluster]

TOPOLOGY = Topology(quorum_group_size=3, delivery_limit=5)
SPEC = ServiceQueue(service="cluster_pair", bindings=(binding(PullRequested, project="ssss"),))
EVENTS = 240


async def test_two_instances_share_the_work_and_do_nothing_twice(cluster, cluster_vhost, postgres_url):
    # Declared through node 0, which therefore holds the queue's leader; the instances live on nodes 1 and 2.
    await declare_all(cluster.address(cluster_vhost), TOPOLOGY, [SPEC])
    leader = cluster.index_of(cluster.leaders(cluster_vhost)[TOPOLOGY.queue(SPEC.service)])
    homes = [i for i in range(len(cluster.slots)) if i != leader]
    effects: list[tuple[str, str]] = []  # (instance, event id): the handler's side effect

    def handler(name: str):
        async def handle(msg: Incoming[PullRequested], _emit: Emitter) -> None:
            await asyncio.sleep(0.01)  # some work, so that one instance cannot take everything
            effects.append((name, msg.envelope.id))
        return handle

    stores = [ProcessedStore(postgres_url, SPEC.service) for _ in homes]
    services = [
        ConsumerService(amqp_url=cluster.address(cluster_vhost, first=home), queue=SPEC,
                        handlers={PullRequested: handler(f"instance-{home}")}, source="hotupdate/tests",
                        topology=TOPOLOGY, processed=store, prefetch=4)
        for home, store in zip(homes, stores, strict=True)
    ]
    for service in services:
        await service.start()
    confirmed: list[str] = []
    try:
        async with AsyncPublisher(cluster.address(cluster_vhost, first=homes[0]), TOPOLOGY,
                                  retry_seconds=90) as publisher:
            for i in range(EVENTS):
                if i == EVENTS // 3:
                    cluster.kill(leader)  # a new leader is elected on one of the instances' nodes
                envelope = make_envelope(EXAMPLES[0], source="tests", updateid=f"u-{i}", project="ssss", area="cn")
                await publisher.publish(envelope)
                confirmed.append(envelope.id)
        for _ in range(900):
            if {event_id for _, event_id in effects} >= set(confirmed):
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(2)  # time for a late second delivery to show
    finally:
        for service in services:
            await service.stop()
        for store in stores:
            store.close()

    handled = Counter(event_id for _, event_id in effects)
    assert set(confirmed) - set(handled) == set(), "confirmed events were never handled"
    assert [event_id for event_id, n in handled.items() if n > 1] == [], "an event was handled twice"
    per_instance = Counter(name for name, _ in effects)
    assert len(per_instance) == 2 and min(per_instance.values()) >= EVENTS // 10, per_instance
