"""Trace context as the envelope's CloudEvents extensions: inherited through a process that does not
trace, continued by a handler's span when it does, sampled where a trace starts and followed after;
off loads no SDK; /metrics for loopback or the token."""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import sys
from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from bus import tracing
from bus.contract.envelope import Envelope
from bus.contract.events import PullRequested
from bus.contract.registry import make_envelope
from bus.handling import child_envelope
from bus.metrics import metrics_allowed
from producers.cmdb.service import new_envelope

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
UNSAMPLED = f"00-{TRACE_ID}-00f067aa0ba902b7-00"

EVENT = PullRequested(update_type="hot_server", version="004200000", area_name="大陆", requested_by="ops")


def _request(**extensions: str) -> Envelope:
    return make_envelope(EVENT, source="hotupdate/cmdb", updateid="u-1", project="ssss", area="cn",
                         extensions=extensions)


def _child(parent: Envelope) -> Envelope:
    return child_envelope(parent, EVENT, source="hotupdate/file_pull/recv1", offset=1)


@pytest.fixture
def traced() -> Iterator[tuple[InMemorySpanExporter, TracerProvider]]:
    """Tracing on with every trace kept; off again afterwards, as the rest of the process runs by default."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=tracing.sampler(1.0))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    yield exporter, provider
    tracing.disable()


def _sampled_at(ratio: float) -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=tracing.sampler(ratio))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    return exporter


def test_untraced_envelope_has_no_trace_extension_on_the_wire() -> None:
    assert not tracing.enabled()
    assert b"traceparent" not in _request().to_bytes()
    assert tracing.current_extensions() == {}


def test_without_tracing_a_child_carries_its_parents_trace_extensions_as_they_came() -> None:
    parent = _request(traceparent=TRACEPARENT, tracestate="vendor=abc", teamtag="blue")
    assert _child(parent).extensions == {"traceparent": TRACEPARENT, "tracestate": "vendor=abc"}


def test_a_handler_span_continues_the_envelope_and_its_children_carry_the_span(traced) -> None:
    exporter, _ = traced
    parent = _request(traceparent=TRACEPARENT)
    with tracing.handling(parent, "file_pull.recv1"):
        child = _child(parent)
    (span,) = exporter.get_finished_spans()
    assert format(span.context.trace_id, "032x") == TRACE_ID
    assert format(span.parent.span_id, "016x") == "00f067aa0ba902b7"
    assert span.attributes["hotupdate.update_id"] == "u-1"
    assert child.extensions == {"traceparent": f"00-{TRACE_ID}-{span.context.span_id:016x}-01"}
    assert Envelope.from_bytes(child.to_bytes()) == child  # an extension like any other on the wire


def test_a_failing_handler_ends_its_span_as_an_error_and_leaves_the_context_as_it_found_it(traced) -> None:
    exporter, _ = traced
    with pytest.raises(ValueError, match="disk full"), tracing.handling(_request(traceparent=TRACEPARENT), "f.r1"):
        raise ValueError("disk full")
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "ValueError: disk full"
    assert [(e.name, e.attributes["exception.message"]) for e in span.events] == [("exception", "disk full")]
    assert not trace.get_current_span().get_span_context().is_valid  # detached: the next event starts clean
    assert _child(_request()).extensions == {}


def test_a_chain_the_cmdb_starts_in_a_span_joins_its_trace_and_one_brought_keeps_its_own(traced) -> None:
    _, provider = traced
    with provider.get_tracer("test").start_as_current_span("POST /updates") as request_span:
        started = new_envelope(EVENT, source="hotupdate/cmdb", updateid="u-1", project="ssss", area="cn")
        brought = _request(traceparent=TRACEPARENT)  # the contract adds no trace of its own
    assert started.extensions["traceparent"].split("-")[1] == format(request_span.get_span_context().trace_id, "032x")
    assert brought.extensions == {"traceparent": TRACEPARENT}


def test_a_malformed_traceparent_starts_a_new_trace_instead_of_failing_the_handler(traced) -> None:
    exporter, _ = traced
    parent = _request(traceparent="00-not-a-trace")
    with tracing.handling(parent, "file_pull.recv1"):
        child = _child(parent)
    (span,) = exporter.get_finished_spans()
    assert span.parent is None
    assert child.extensions["traceparent"].split("-")[1] == format(span.context.trace_id, "032x")


def test_the_sampling_decision_is_made_where_the_trace_starts_and_followed_after() -> None:
    try:
        exporter = _sampled_at(0.0)
        root = _request()
        with tracing.handling(root, "file_pull.recv1"):  # no traceparent: this span starts the trace, unkept
            unsampled_child = _child(root)
        with tracing.handling(_request(traceparent=TRACEPARENT), "file_pull.recv1"):  # kept upstream: kept
            pass
        assert len(exporter.get_finished_spans()) == 1
        flags = int(unsampled_child.extensions["traceparent"].split("-")[3], 16)
        assert not flags & 0x01  # not sampled (W3C trace-flags): the next hop does not record either

        exporter = _sampled_at(1.0)
        unsampled = _request(traceparent=UNSAMPLED, tracestate="vendor=abc")
        with tracing.handling(unsampled, "file_pull.recv1"):  # dropped upstream: dropped here, and after
            child = _child(unsampled)
        assert exporter.get_finished_spans() == ()
        assert child.extensions == {"traceparent": UNSAMPLED, "tracestate": "vendor=abc"}
    finally:
        tracing.disable()


def test_a_request_that_asks_to_be_traced_is_traced_whole_whatever_the_ratio() -> None:
    started: list[Envelope] = []

    async def app(scope: dict[str, object], receive: object, send: object) -> None:  # the CMDB starting a chain
        started.append(new_envelope(EVENT, source="hotupdate/cmdb", updateid="u-1", project="ssss", area="cn"))

    def request(headers: dict[str, str]) -> None:
        scope = {"type": "http", "method": "POST", "path": "/api/updates/u-1/push",
                 "headers": [(k.encode(), v.encode()) for k, v in headers.items()]}
        asyncio.run(tracing.TracingMiddleware(app)(scope, None, None))

    try:
        exporter = _sampled_at(0.0)  # nothing is kept on its own
        request({})
        asked = tracing.sampled_trace_headers()
        request(asked)
        trace_id = asked["traceparent"].split("-")[1]
        (span,) = exporter.get_finished_spans()  # the asking request's span only
        assert format(span.context.trace_id, "032x") == trace_id
        unasked, traced = (envelope.extensions["traceparent"].split("-") for envelope in started)
        assert not int(unasked[3], 16) & 0x01  # not sampled (W3C trace-flags): no hop after records it either
        assert traced[1:3] == [trace_id, f"{span.context.span_id:016x}"] and int(traced[3], 16) & 0x01
        assert tracing.sampled_trace_headers()["traceparent"].split("-")[1] != trace_id  # a new trace each time
    finally:
        tracing.disable()


def test_a_remote_command_in_an_unsampled_handler_starts_no_trace_of_its_own() -> None:
    # Every root is kept here, so a command span under no parent would start a new, recorded trace
    # and hand its id to the events emitted after it: the update would be traced in pieces.
    try:
        exporter = _sampled_at(1.0)
        unsampled = _request(traceparent=UNSAMPLED)
        with tracing.handling(unsampled, "ops_executor.ops1"), tracing.span("ssh 10.0.0.1", {"server": "s1"}):
            child = _child(unsampled)
        assert exporter.get_finished_spans() == ()
        assert child.extensions == {"traceparent": UNSAMPLED}
        with tracing.span("outside any handler"):  # a span with no handler around it is a root, kept
            pass
        assert len(exporter.get_finished_spans()) == 1
    finally:
        tracing.disable()


def test_a_sampler_that_ignores_parents_still_records_under_an_unsampled_one(monkeypatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_on")
    try:
        exporter = _sampled_at(0.0)  # the variable wins over the ratio
        with tracing.handling(_request(traceparent=UNSAMPLED), "file_pull.recv1"):
            pass
        (span,) = exporter.get_finished_spans()
        assert format(span.context.trace_id, "032x") == TRACE_ID
    finally:
        tracing.disable()


def test_the_otel_sampler_variable_takes_precedence_over_the_configured_ratio(monkeypatch) -> None:
    assert "TraceIdRatioBased{0.25}" in tracing.sampler(0.25).get_description()
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
    assert tracing.sampler(0.25) is None
    assert TracerProvider(sampler=tracing.sampler(0.25)).sampler.get_description() == "AlwaysOffSampler"


def test_tracing_off_loads_no_sdk() -> None:
    script = (
        "import sys\n"
        "import bus.consumer, producers.cmdb.bootstrap, projections.service, consumers.ops_executor.service\n"
        "from bus.tracing import setup_tracing\n"
        "from domain.config import TelemetryConfig\n"
        "setup_tracing(TelemetryConfig(), 'cmdb')()\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry.sdk')))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


TOKEN_SHA256 = hashlib.sha256(b"s3cret").hexdigest()


@pytest.mark.parametrize(("host", "auth", "token_sha256", "allowed"), [
    ("127.0.0.1", None, None, True),
    ("::1", None, None, True),
    ("192.0.2.7", None, None, False),
    ("192.0.2.7", "Bearer s3cret", TOKEN_SHA256, True),
    ("192.0.2.7", "Bearer wrong", TOKEN_SHA256, False),
    ("192.0.2.7", "Basic s3cret", TOKEN_SHA256, False),
    ("192.0.2.7", f"Bearer {TOKEN_SHA256}", TOKEN_SHA256, False),  # the digest itself is not the token
    (None, None, None, False),
])
def test_metrics_are_for_loopback_or_the_token(host, auth, token_sha256, allowed) -> None:
    assert metrics_allowed(host, auth, token_sha256) is allowed
