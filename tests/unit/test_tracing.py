"""Trace context in the envelope: W3C-shaped, inherited through a process that does not trace,
continued by a handler's span when it does; metrics labels stay bounded."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from bus import tracing
from bus.envelope import Envelope, EnvelopeError
from bus.events import PullRequested
from bus.handling import child_envelope
from bus.metrics import metrics_allowed
from bus.registry import make_envelope

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


EVENT = PullRequested(update_type="hot_server", version="004200000", area_name="大陆", requested_by="ops")


def _request(**extra) -> Envelope:
    env = make_envelope(EVENT, source="hotupdate/cmdb", updateid="u-1", project="ssss", area="cn")
    return env.model_copy(update=extra)


def test_envelope_takes_a_w3c_traceparent_and_refuses_anything_else() -> None:
    env = _request(traceparent=TRACEPARENT, tracestate="vendor=abc")
    parsed = Envelope.from_bytes(env.to_bytes())
    assert parsed.traceparent == TRACEPARENT and parsed.tracestate == "vendor=abc"
    bad = env.to_bytes().replace(TRACEPARENT.encode(), b"00-not-a-trace")
    with pytest.raises(EnvelopeError, match="traceparent"):
        Envelope.from_bytes(bad)


def test_untraced_envelope_has_no_trace_fields_on_the_wire() -> None:
    assert b"traceparent" not in _request().to_bytes()


def test_without_tracing_a_child_carries_its_parents_trace_as_it_came() -> None:
    assert not tracing.enabled()
    parent = _request(traceparent=TRACEPARENT, tracestate="vendor=abc")
    child = child_envelope(parent, EVENT, source="hotupdate/file_pull/recv1", offset=1)
    assert (child.traceparent, child.tracestate) == (TRACEPARENT, "vendor=abc")
    assert tracing.current_trace() == (None, None)


def test_with_tracing_a_handler_span_continues_the_envelope_and_its_children_carry_the_span() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    try:
        parent = _request(traceparent=TRACEPARENT)
        with tracing.handling(parent, "file_pull.recv1"):
            child = child_envelope(parent, EVENT, source="hotupdate/file_pull/recv1", offset=1)
        (span,) = exporter.get_finished_spans()
        assert format(span.context.trace_id, "032x") == "4bf92f3577b34da6a3ce929d0e0e4736"
        assert format(span.parent.span_id, "016x") == "00f067aa0ba902b7"
        assert span.attributes["hotupdate.update_id"] == "u-1"
        assert child.traceparent == f"00-4bf92f3577b34da6a3ce929d0e0e4736-{span.context.span_id:016x}-01"
    finally:
        tracing._STATE.enabled = False  # the rest of this process runs untraced, as by default


@pytest.mark.parametrize(("host", "auth", "token", "allowed"), [
    ("127.0.0.1", None, None, True),
    ("::1", None, None, True),
    ("192.0.2.7", None, None, False),
    ("192.0.2.7", "Bearer s3cret", "s3cret", True),
    ("192.0.2.7", "Bearer wrong", "s3cret", False),
    (None, None, None, False),
])
def test_metrics_are_for_loopback_or_the_token(host, auth, token, allowed) -> None:
    assert metrics_allowed(host, auth, token) is allowed
