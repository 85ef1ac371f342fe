"""The bus against a real RabbitMQ: publishing, routing by project, the alternate exchange."""

from __future__ import annotations

import json

import pytest

from bus.contract.envelope import Envelope
from bus.contract.examples import EXAMPLES, HOT_CLIENT_REQUEST
from bus.contract.registry import DEFAULT_REGISTRY, make_envelope
from bus.publisher import AsyncPublisher, PublishError, SyncPublisher
from bus.topology import Topology
from tests.busprobe import Probe

pytestmark = [pytest.mark.rabbit]


def _envelope(event, project="ssss", area="cn", updateid="u-1"):
    return make_envelope(event, source="tests", updateid=updateid, project=project, area=area)


async def test_every_event_type_round_trips_through_the_broker(amqp_url):
    events = [*EXAMPLES, HOT_CLIENT_REQUEST]
    async with Probe(amqp_url) as probe, AsyncPublisher(amqp_url) as pub:
        await probe.bind("#")
        sent = [await pub.publish(_envelope(e)) for e in events]
        received = await probe.wait_for(len(sent))
    by_id = {m.message_id: m for m in received}
    assert set(by_id) == {e.id for e in sent}
    for env, event in zip(sent, events, strict=True):
        msg = by_id[env.id]
        assert msg.routing_key == f"ssss.cn.{event.event_name}.v{event.event_version}"
        back = Envelope.from_bytes(msg.body)
        assert back == env
        decoded = DEFAULT_REGISTRY.decode(back)  # older versions arrive upcast, keeping every field they had
        assert _upcast_keeps(decoded.model_dump(), event.model_dump()), (decoded, event)
        assert msg.delivery_mode == 2  # persistent


async def test_consumer_bound_to_one_project_never_sees_another_projects_events(amqp_url):
    async with Probe(amqp_url) as ssss, Probe(amqp_url) as everything, AsyncPublisher(amqp_url) as pub:
        await ssss.bind("ssss.#")
        await everything.bind("#")
        await pub.publish(_envelope(EXAMPLES[0], project="snqxz", area="tw"))
        await pub.publish(_envelope(EXAMPLES[0], project="ssss", area="cn"))
        await pub.publish(_envelope(EXAMPLES[0], project="snqxz", area="vn"))
        await everything.wait_for(3)
        got = await ssss.wait_for(1)
    assert [m.routing_key for m in got] == ["ssss.cn.pull.requested.v1"]
    assert len(ssss.messages) == 1


async def test_unroutable_event_is_caught_by_the_alternate_exchange(amqp_url):
    topology = Topology()
    async with Probe(amqp_url) as probe, AsyncPublisher(amqp_url) as pub:
        env = _envelope(EXAMPLES[0], project="nobody_binds_this")
        await pub.publish(env)  # confirmed: the alternate exchange took it
        await probe.watch(topology.unroutable_queue)
        got = await probe.wait_for(1)
    assert got[0].message_id == env.id
    assert got[0].routing_key == "nobody_binds_this.cn.pull.requested.v1"


def test_sync_publisher_publishes_with_confirms(amqp_url):
    import pika

    env = _envelope(EXAMPLES[0])
    params = pika.URLParameters(amqp_url)
    conn = pika.BlockingConnection(params)
    ch = conn.channel()
    with SyncPublisher(amqp_url) as pub:
        pub.publish(env)  # declares the exchanges on first use
        q = ch.queue_declare("", exclusive=True).method.queue
        ch.queue_bind(q, "hotupdate.events", "ssss.#")
        second = _envelope(EXAMPLES[1])
        pub.publish(second)
    method, props, body = ch.basic_get(q, auto_ack=True)
    conn.close()
    assert method is not None
    assert props.message_id == second.id
    assert json.loads(body)["type"] == "hotupdate.files.pulled.v1"


def test_sync_publisher_reports_an_unreachable_broker_as_an_error():
    pub = SyncPublisher("amqp://guest:guest@127.0.0.1:1/", retry_seconds=0.5)
    with pytest.raises(PublishError, match="unreachable"):
        pub.publish(_envelope(EXAMPLES[0]))


def _upcast_keeps(new: object, old: object) -> bool:
    """``new`` holds every field of ``old`` with its value, at any depth (nested models included); the
    fields a later version added, ``old`` lacks, and the upcast fills them in (a default or a derived value)."""
    if isinstance(old, dict) and isinstance(new, dict):
        return all(k in new and _upcast_keeps(new[k], v) for k, v in old.items())
    if isinstance(old, list) and isinstance(new, list):
        return len(old) == len(new) and all(_upcast_keeps(n, o) for n, o in zip(new, old, strict=True))
    return new == old
