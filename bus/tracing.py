"""Distributed traces: W3C trace context in each envelope, OpenTelemetry spans around handlers.

Off unless the operator names an OTLP endpoint (``telemetry.traces_endpoint``). Off means no
SDK is set up and nothing here calls OpenTelemetry at all: a child envelope copies its
parent's ``traceparent``/``tracestate`` as they are (so a trace survives a hop through a
process that does not trace), a handler runs without a span. On, each process sets up the
SDK once (:func:`setup_tracing`, from its composition root), a handler runs in a consumer
span whose parent is the envelope's ``traceparent``, and the events it emits carry that
span's context (:func:`child_trace`): the CMDB request, the outbox, each consumer and the
events they emit make one trace.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

if TYPE_CHECKING:
    from bus.envelope import Envelope

log = logging.getLogger(__name__)

_PROPAGATOR = TraceContextTextMapPropagator()
_TRACER_NAME = "hotupdate"
_MAX_LINKS = 128  # a batch span links to at most this many of its events' contexts


@dataclass
class _State:
    enabled: bool = False


_STATE = _State()  # process-wide, as OpenTelemetry's own tracer provider is


def enabled() -> bool:
    """True once :func:`setup_tracing` set up an exporter in this process."""
    return _STATE.enabled


def setup_tracing(endpoint: str | None, service: str) -> Callable[[], None]:
    """Export this process's spans to the OTLP/HTTP ``endpoint``; returns the flush-and-stop to call at exit.

    ``endpoint`` None: nothing is set up (the API's no-op tracer, and this module skips even that).
    """
    if not endpoint:
        return lambda: None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": service, "service.namespace": "hotupdate"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    install(provider)
    log.info("tracing: %s exports spans to %s", service, endpoint)
    return provider.shutdown


def install(provider: Any) -> None:
    """Use ``provider`` (an SDK TracerProvider) for this process's spans; for tests and benchmarks too."""
    if trace.get_tracer_provider() is not provider:  # OpenTelemetry takes one provider per process
        trace.set_tracer_provider(provider)
    _STATE.enabled = True


def _tracer() -> trace.Tracer:
    return trace.get_tracer(_TRACER_NAME)


def _context_of(envelope: Envelope) -> otel_context.Context | None:
    if envelope.traceparent is None:
        return None
    carrier = {"traceparent": envelope.traceparent}
    if envelope.tracestate is not None:
        carrier["tracestate"] = envelope.tracestate
    return _PROPAGATOR.extract(carrier)


def _event_attributes(envelope: Envelope, service: str) -> dict[str, str]:
    return {"messaging.system": "rabbitmq", "messaging.destination.name": envelope.routing_key,
            "messaging.message.id": envelope.id, "cloudevents.event_type": envelope.type,
            "hotupdate.update_id": envelope.updateid, "hotupdate.service": service}


@contextmanager
def handling(envelope: Envelope, service: str) -> Iterator[None]:
    """Run a handler inside a consumer span continuing the envelope's trace (nothing when tracing is off)."""
    if not _STATE.enabled:
        yield
        return
    with _tracer().start_as_current_span(
        f"{envelope.event_name} process", context=_context_of(envelope), kind=trace.SpanKind.CONSUMER,
        attributes=_event_attributes(envelope, service),
    ):
        yield


@contextmanager
def handling_batch(envelopes: Sequence[Envelope], service: str) -> Iterator[None]:
    """A batch handler's span: a child of its first event's trace, linked to the traces of (up to 128 of) the rest."""
    if not _STATE.enabled:
        yield
        return
    parent = _context_of(envelopes[0]) if envelopes else None
    links = []
    for envelope in envelopes[1:_MAX_LINKS]:
        ctx = _context_of(envelope)
        if ctx is not None:
            links.append(trace.Link(trace.get_current_span(ctx).get_span_context()))
    with _tracer().start_as_current_span(
        "batch process", context=parent, kind=trace.SpanKind.CONSUMER, links=links,
        attributes={"messaging.batch.message_count": len(envelopes), "hotupdate.service": service},
    ):
        yield


@contextmanager
def span(name: str, attributes: Mapping[str, str | int | bool] | None = None) -> Iterator[None]:
    """An internal span (a remote command, an rsync) in the current trace; nothing when tracing is off."""
    if not _STATE.enabled:
        yield
        return
    with _tracer().start_as_current_span(name, attributes=dict(attributes or {})):
        yield


TraceFields = tuple[str | None, str | None]  # (traceparent, tracestate) of an envelope


def _injected() -> TraceFields:
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier.get("traceparent"), carrier.get("tracestate")


def child_trace(parent: Envelope) -> TraceFields:
    """The trace context of an event caused by ``parent``: the current span's, else the parent's as it came."""
    if _STATE.enabled:
        fields = _injected()
        if fields[0] is not None:
            return fields
    return parent.traceparent, parent.tracestate


def current_trace() -> TraceFields:
    """The trace context for an envelope starting a chain: the current span's (none when not tracing)."""
    if not _STATE.enabled:
        return None, None
    return _injected()


class TracingMiddleware:
    """ASGI middleware: each HTTP request in a server span (continuing a caller's ``traceparent`` header).

    When tracing is off it only passes the request on.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if not _STATE.enabled or scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", [])
                   if k in (b"traceparent", b"tracestate")}
        method = str(scope.get("method", "GET"))
        # The span name stays low-cardinality (no ids from the path); the path is an attribute.
        with _tracer().start_as_current_span(
            f"HTTP {method}", context=_PROPAGATOR.extract(headers) if headers else None,
            kind=trace.SpanKind.SERVER,
            attributes={"http.request.method": method, "url.path": str(scope.get("path", ""))},
        ):
            await self.app(scope, receive, send)
