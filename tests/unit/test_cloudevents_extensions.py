"""An event written with the official CloudEvents SDK, carrying W3C trace context, is accepted and kept whole."""

from __future__ import annotations

import json

import pytest
from cloudevents.core.bindings import rabbitmq
from cloudevents.core.v1.event import CloudEvent

from bus.contract.envelope import Envelope, EnvelopeError
from bus.contract.events import PullRequested
from bus.contract.examples import EXAMPLES
from bus.contract.registry import DEFAULT_REGISTRY, event_data, schema_uri
from bus.handling import child_envelope

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
PULL = EXAMPLES[0]
PULLED = EXAMPLES[1]


def sdk_structured_body(**extensions: object) -> bytes:
    """What a tool using the CloudEvents SDK's RabbitMQ binding publishes (structured mode)."""
    event = CloudEvent(
        attributes={
            "type": PULL.type_name(), "source": "tools/release-bot", "datacontenttype": "application/json",
            "dataschema": schema_uri(PULL.type_name()), "updateid": "u-42", "project": "ssss", "area": "cn",
            "sequence": 0, "correlationid": "u-42", **extensions,
        },
        data=event_data(PULL),
    )
    message = rabbitmq.to_structured_event(event)
    assert message.content_type == "application/cloudevents+json"
    return message.body


def test_an_sdk_event_with_trace_context_is_accepted_and_keeps_its_extensions():
    body = sdk_structured_body(traceparent=TRACEPARENT, tracestate="congo=t61rcWkgMzE")
    envelope = Envelope.from_bytes(body)
    assert isinstance(DEFAULT_REGISTRY.decode(envelope), PullRequested)
    assert envelope.extensions == {"traceparent": TRACEPARENT, "tracestate": "congo=t61rcWkgMzE"}
    assert json.loads(envelope.to_bytes())["traceparent"] == TRACEPARENT  # in the hashed canonical bytes


def test_the_canonical_bytes_change_with_an_extension_so_the_hash_chain_covers_it():
    one = Envelope.from_bytes(sdk_structured_body(traceparent=TRACEPARENT))
    other = Envelope.from_bytes(one.to_bytes().replace(b"-01", b"-00"))
    plain = json.loads(one.to_bytes())
    del plain["traceparent"]
    assert one.to_bytes() != Envelope.from_bytes(json.dumps(plain).encode()).to_bytes()
    assert one.to_bytes() != other.to_bytes() and other.extensions["traceparent"].endswith("-00")


def test_a_child_event_inherits_trace_context_and_nothing_else():
    parent = Envelope.from_bytes(sdk_structured_body(traceparent=TRACEPARENT, tracestate="a=1", teamtag="blue"))
    child = child_envelope(parent, PULLED, source="hotupdate/file_pull/recv1", offset=1)
    assert child.extensions == {"traceparent": TRACEPARENT, "tracestate": "a=1"}
    assert Envelope.from_bytes(child.to_bytes()) == child


def test_the_structured_document_from_the_cloudevents_spec_parses():
    # The JSON format spec's example, with hotupdate's required extensions and data added.
    spec_example = {
        "specversion": "1.0", "type": PULL.type_name(), "source": "https://github.com/cloudevents/spec/pull",
        "subject": "123", "id": "A234-1234-1234", "time": "2018-04-05T17:31:00Z", "comexampleextension1": "value",
        "comexampleothervalue": 5, "datacontenttype": "application/json",
        "updateid": "u-1", "project": "ssss", "area": "cn", "sequence": 0, "correlationid": "u-1",
        "data": event_data(PULL),
    }
    envelope = Envelope.from_bytes(json.dumps(spec_example).encode())
    assert envelope.extensions == {"comexampleextension1": "value", "comexampleothervalue": 5}


@pytest.mark.parametrize("value", [{"a": 1}, [1], None, 2**31, 1.5, "x" * 4097])
def test_an_extension_value_cloudevents_cannot_type_is_refused(value):
    body = json.loads(sdk_structured_body())
    with pytest.raises(EnvelopeError, match="extension 'custom'"):
        Envelope.from_bytes(json.dumps({**body, "custom": value}).encode())


def test_the_event_log_keeps_and_hashes_the_extensions():
    from datetime import UTC, datetime

    from projections.log import Head, chain_hash, log_row
    from projections.models import GENESIS_HASH

    envelope = Envelope.from_bytes(sdk_structured_body(traceparent=TRACEPARENT))
    head = Head(position=0, hash=GENESIS_HASH, version=0)
    row = log_row(head, envelope, datetime.now(UTC), publisher="team.release-bot")
    assert json.loads(row["envelope"])["traceparent"] == TRACEPARENT
    assert row["hash"] == chain_hash(GENESIS_HASH, row["envelope"].encode(), "team.release-bot")
    tampered = row["envelope"].replace(TRACEPARENT, TRACEPARENT[:-2] + "00").encode()
    assert chain_hash(GENESIS_HASH, tampered, "team.release-bot") != row["hash"]
