"""A broker address with several nodes: both client libraries connect to the first that answers, and a
connection that loses its node moves to the next one of the list."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from bus.connection import FailoverConnection, connect_blocking
from bus.consumer import ConsumerService
from bus.contract.events import PullRequested
from bus.contract.examples import EXAMPLES
from bus.contract.registry import make_envelope
from bus.handling import Emitter, Incoming
from bus.publisher import AsyncPublisher, SyncPublisher
from bus.topology import ServiceQueue, Topology, binding
from tests.busprobe import Probe
from tests.rabbit_node import RabbitNode, free_port, start_node

pytestmark = [pytest.mark.rabbit]


def _envelope(updateid: str):
    return make_envelope(EXAMPLES[0], source="tests", updateid=updateid, project="ssss", area="cn")


def _with_dead_first_node(amqp_url: str, form: str) -> str:
    dead = free_port()  # nothing listens there
    parts = urlsplit(amqp_url)
    if form == "urls":
        return f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[0]}@127.0.0.1:{dead}{parts.path},{amqp_url}"
    credentials, host = parts.netloc.rsplit("@", 1)
    return f"{parts.scheme}://{credentials}@127.0.0.1:{dead},{host}{parts.path}"


@pytest.mark.parametrize("form", ["urls", "host_list"])
async def test_both_libraries_publish_and_consume_when_the_first_node_of_the_list_is_down(amqp_url, form):
    address = _with_dead_first_node(amqp_url, form)
    received: list[str] = []

    async def handle(msg: Incoming[PullRequested], _emit: Emitter) -> None:
        received.append(msg.envelope.id)

    spec = ServiceQueue(service="failover_probe", bindings=(binding(PullRequested, project="ssss"),))
    service = ConsumerService(amqp_url=address, queue=spec, handlers={PullRequested: handle}, source="hotupdate/tests")
    await service.start()  # aio-pika consumes from the second node
    try:
        by_pika = _envelope("u-pika")
        with SyncPublisher(address, retry_seconds=5) as publisher:
            await asyncio.to_thread(publisher.publish, by_pika)
        for _ in range(100):
            if received:
                break
            await asyncio.sleep(0.1)
        assert received == [by_pika.id]
    finally:
        await service.stop()

    by_aio_pika = _envelope("u-aio-pika")
    async with AsyncPublisher(address, retry_seconds=5) as publisher:
        await publisher.publish(by_aio_pika)

    def get_with_pika() -> bytes | None:
        connection = connect_blocking(address)
        try:
            method, _props, body = connection.channel().basic_get(Topology().queue("failover_probe"), auto_ack=True)
            return body if method is not None else None
        finally:
            connection.close()

    body = await asyncio.to_thread(get_with_pika)
    assert body is not None and by_aio_pika.id.encode() in body


@pytest.fixture
def own_node(tmp_path) -> Iterator[RabbitNode]:
    node = start_node(tmp_path / "node")
    yield node
    node.stop()


@pytest.mark.slow
async def test_publishers_move_to_the_next_node_when_theirs_is_killed(own_node, amqp_url):
    address = f"{own_node.url()},{amqp_url}"  # two brokers standing in for two nodes of a cluster
    async with Probe(amqp_url) as second, AsyncPublisher(address) as async_pub:
        await second.bind("#")
        with SyncPublisher(address) as sync_pub:
            await asyncio.to_thread(sync_pub.publish, _envelope("u-before"))  # to the first node
            await async_pub.publish(_envelope("u-before-async"))
            connection = async_pub._connection
            assert isinstance(connection, FailoverConnection) and connection.node.port == own_node.amqp_port
            assert second.messages == []

            own_node.kill()  # kill -9 the node both publishers are connected to

            after_async, after_sync = _envelope("u-after-async"), _envelope("u-after")
            await async_pub.publish(after_async)  # aio-pika: the robust connection reconnects to the next node
            await asyncio.to_thread(sync_pub.publish, after_sync)  # pika: reconnects through the list
            got = await second.wait_for(2)
    assert {m.message_id for m in got} == {after_async.id, after_sync.id}
    assert connection.node.port == urlsplit(amqp_url).port


@pytest.mark.slow
async def test_a_consumer_whose_node_is_killed_resumes_on_the_next_node(own_node, amqp_url):
    address = f"{own_node.url()},{amqp_url}"
    received: list[str] = []

    async def handle(msg: Incoming[PullRequested], _emit: Emitter) -> None:
        received.append(msg.envelope.id)

    spec = ServiceQueue(service="failover_consumer", bindings=(binding(PullRequested, project="ssss"),))
    service = ConsumerService(amqp_url=address, queue=spec, handlers={PullRequested: handle}, source="hotupdate/tests")
    await service.start()
    try:
        async with AsyncPublisher(own_node.url()) as first:
            await first.publish(before := _envelope("u-before"))
        for _ in range(100):
            if received:
                break
            await asyncio.sleep(0.1)
        assert received == [before.id]

        own_node.kill()
        after = _envelope("u-after")
        async with AsyncPublisher(amqp_url) as second:
            for _ in range(300):  # until the consumer has re-declared its queue there and is bound again
                await second.publish(after)
                await asyncio.sleep(0.1)
                if after.id in received:
                    break
    finally:
        await service.stop()
    assert after.id in received
