"""The contract at a real consumer: an SDK event with trace context is handled and its trace followed;
a malformed value (an out-of-range sequence) is parked as malformed on first sight, not retried."""

from __future__ import annotations

import json

import pytest
from cloudevents.core.bindings import rabbitmq
from cloudevents.core.v1.event import CloudEvent

from bus.consumer import ConsumerService
from bus.contract.envelope import Envelope
from bus.contract.events import FilesPulled, PullRequested
from bus.contract.examples import EXAMPLES
from bus.contract.registry import event_data
from bus.redelivery import ATTEMPT_HEADER, REASON_HEADER
from bus.topology import ServiceQueue, Topology, binding
from tests.busprobe import Probe

pytestmark = [pytest.mark.rabbit]
PULL, PULLED = EXAMPLES[0], EXAMPLES[1]
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


class Recorder:
    def __init__(self) -> None:
        self.seen: list[Envelope] = []

    async def __call__(self, msg, emit):
        self.seen.append(msg.envelope)
        await emit.emit(PULLED)


def _service(url: str, handler: Recorder) -> ConsumerService:
    return ConsumerService(
        amqp_url=url,
        queue=ServiceQueue(service="svc", bindings=(binding(PullRequested, project="ssss"),), retry_delays_ms=(100,)),
        handlers={PullRequested: handler},
        source="tests/svc",
    )


def _sdk_body(**attributes: object) -> bytes:
    event = CloudEvent(
        attributes={"type": PULL.type_name(), "source": "tools/release-bot", "datacontenttype": "application/json",
                    "updateid": "u-7", "project": "ssss", "area": "cn", "sequence": 0, "correlationid": "u-7",
                    **attributes},
        data=event_data(PULL),
    )
    return rabbitmq.to_structured_event(event).body


async def test_an_sdk_event_with_traceparent_is_handled_and_its_child_carries_the_trace(amqp_url):
    handler = Recorder()
    service = _service(amqp_url, handler)
    await service.start()
    try:
        async with Probe(amqp_url) as probe:
            await probe.bind(binding(FilesPulled))
            await probe.publish_raw(_sdk_body(traceparent=TRACEPARENT, id="sdk-1"), "ssss.cn.pull.requested.v1",
                                    message_id="sdk-1")
            (child_message,) = await probe.wait_for(1)
    finally:
        await service.stop()
    (parent,) = handler.seen
    assert parent.id == "sdk-1" and parent.extensions == {"traceparent": TRACEPARENT}
    child = Envelope.from_bytes(child_message.body)
    assert child.causationid == "sdk-1"
    assert child.extensions == {"traceparent": TRACEPARENT}


async def test_a_sequence_beyond_the_cloudevents_integer_is_parked_as_malformed_at_once(amqp_url):
    handler = Recorder()
    service = _service(amqp_url, handler)
    await service.start()
    body = json.dumps({**json.loads(_sdk_body(id="big-1")), "sequence": 2**63}).encode()
    try:
        async with Probe(amqp_url) as probe:
            await probe.watch(Topology().parking_queue("svc"))
            await probe.publish_raw(body, "ssss.cn.pull.requested.v1", message_id="big-1")
            (parked,) = await probe.wait_for(1)
    finally:
        await service.stop()
    assert handler.seen == []
    assert parked.headers[REASON_HEADER].startswith("malformed: ")
    assert "sequence" in parked.headers[REASON_HEADER]
    assert int(parked.headers.get(ATTEMPT_HEADER, 1)) == 1  # first sight, no retry
