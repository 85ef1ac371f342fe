"""Unroutable events against a real broker: what mandatory can and cannot say, and
`hotupdate unroutable list|show|requeue`."""

from __future__ import annotations

import asyncio
import json

import pika
import pytest

from bus.connection import connect_blocking
from bus.contract.events import PullRequested
from bus.contract.examples import EXAMPLES
from bus.contract.registry import make_envelope
from bus.publisher import PublishError, SyncPublisher
from bus.topology import ServiceQueue, Topology, binding, declare_all
from bus.unroutable import UnroutableGauge, UnroutableQueue
from cli.main import main

pytestmark = [pytest.mark.rabbit]
TOPOLOGY = Topology()


def _event(n: int = 1):
    return make_envelope(EXAMPLES[0], source="tools/release-bot", updateid=f"u-{n}", project="ssss", area="cn",
                         event_id=f"evt-{n}")


def _depth(url: str, queue: str) -> int:
    connection = connect_blocking(url)
    try:
        return int(connection.channel().queue_declare(queue, passive=True).method.message_count)
    finally:
        connection.close()


def test_an_event_no_queue_is_bound_for_is_confirmed_and_kept_mandatory_says_nothing(amqp_url, capsys):
    asyncio.run(declare_all(amqp_url, TOPOLOGY))  # the exchanges, no service: what a bare `topology declare` makes
    with SyncPublisher(amqp_url) as publisher:
        publisher.publish(_event())  # mandatory=True, and no UnroutableError: the alternate exchange took it
    assert _depth(amqp_url, TOPOLOGY.unroutable_queue) == 1
    assert UnroutableGauge(amqp_url)() == 1

    assert main(["unroutable", "list", "--amqp-url", amqp_url]) == 0
    out = capsys.readouterr().out
    assert "ssss.cn.pull.requested.v1" in out and "hotupdate.pull.requested.v1" in out and "evt-1" in out
    assert "1 unroutable event(s)" in out
    assert main(["unroutable", "list", "--json", "--amqp-url", amqp_url]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["routing_key"] == "ssss.cn.pull.requested.v1" and row["message_id"] == "evt-1"
    assert 0 <= row["age_seconds"] < 60
    assert main(["unroutable", "show", "evt-1", "--amqp-url", amqp_url]) == 0
    assert json.loads(capsys.readouterr().out.split("body:\n", 1)[1])["id"] == "evt-1"
    assert _depth(amqp_url, TOPOLOGY.unroutable_queue) == 1  # looking removed nothing


def test_requeue_before_the_bindings_exist_leaves_the_event_there_once(amqp_url, capsys):
    asyncio.run(declare_all(amqp_url, TOPOLOGY))
    with SyncPublisher(amqp_url) as publisher:
        publisher.publish(_event(1))
        publisher.publish(_event(2))
    assert main(["unroutable", "requeue", "--all", "--amqp-url", amqp_url]) == 1
    out = capsys.readouterr().out
    assert "requeued 0 event(s)" in out and "still unroutable" in out and "evt-1" in out and "evt-2" in out
    assert sorted(m.message_id or "" for m in UnroutableQueue(amqp_url).peek()) == ["evt-1", "evt-2"]


def test_requeue_after_the_binding_exists_delivers_it_and_removes_it(amqp_url, capsys):
    asyncio.run(declare_all(amqp_url, TOPOLOGY))
    with SyncPublisher(amqp_url) as publisher:
        publisher.publish(_event(1))
        publisher.publish(_event(2))
    service = ServiceQueue(service="file_pull.recv1", bindings=(binding(PullRequested, project="ssss"),))
    asyncio.run(declare_all(amqp_url, TOPOLOGY, [service]))  # the consumer's queue now exists

    assert main(["unroutable", "requeue", "evt-2", "--amqp-url", amqp_url]) == 0
    assert "requeued 1 event(s)" in capsys.readouterr().out
    assert [m.message_id for m in UnroutableQueue(amqp_url).peek()] == ["evt-1"]
    connection = connect_blocking(amqp_url)
    try:
        method, props, body = connection.channel().basic_get(TOPOLOGY.queue("file_pull.recv1"), auto_ack=True)
    finally:
        connection.close()
    assert method.routing_key == "ssss.cn.pull.requested.v1"
    assert props.message_id == "evt-2" and json.loads(body)["id"] == "evt-2"
    assert props.user_id == "guest"  # the requeuing login: consumers check it like any publisher's


def test_mandatory_reports_only_a_missing_safety_net(amqp_url):
    # The one case a return can happen on the events exchange: the alternate exchange routes nowhere.
    asyncio.run(declare_all(amqp_url, TOPOLOGY))
    connection = connect_blocking(amqp_url)
    try:
        connection.channel().queue_delete(TOPOLOGY.unroutable_queue)
    finally:
        connection.close()
    with SyncPublisher(amqp_url, declare=False) as publisher, pytest.raises(PublishError, match="returned"):
        publisher.publish(_event())


def test_plain_pika_with_mandatory_gets_no_return_for_an_event_nobody_is_bound_for(amqp_url):
    asyncio.run(declare_all(amqp_url, TOPOLOGY))
    envelope = _event()
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.basic_publish(TOPOLOGY.events_exchange, envelope.routing_key, envelope.to_bytes(),
                              pika.BasicProperties(delivery_mode=2, message_id=envelope.id), mandatory=True)
    finally:
        connection.close()
    assert [m.message_id for m in UnroutableQueue(amqp_url).peek()] == [envelope.id]
