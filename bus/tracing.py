"""Distributed traces: W3C trace context in each envelope, OpenTelemetry spans around handlers.

The trace context travels as the CloudEvents distributed-tracing extension: the ``traceparent``
and ``tracestate`` extension attributes of the envelope (:data:`bus.contract.envelope.FORWARDED_EXTENSIONS`),
which a child event inherits from its cause (:func:`child_extensions`).

Off unless the operator names an OTLP endpoint (``telemetry.traces_endpoint``). Off means the
SDK is not even imported and nothing here calls OpenTelemetry: a child envelope copies its
parent's trace extensions as they are (so a trace survives a hop through a process that does not
trace), a handler runs without a span. On, each process sets up the SDK once (:func:`setup_tracing`,
from its composition root), a handler runs in a consumer span whose parent is the envelope's
``traceparent``, and the events it emits carry that span's context: the CMDB request, the outbox,
each consumer and the events they emit make one trace.

Sampling is parent-based: the first span of a trace (a CMDB request, an event that came without a
``traceparent``) is kept with probability ``telemetry.traces_sample_ratio``, and every later hop
follows that decision, which the ``traceparent``'s flags carry. So an update is traced whole or
not at all. A handler of an event whose ``traceparent`` says "not sampled" runs without a span
at all (nor do the remote commands it runs), and its children carry that same ``traceparent`` on:
an unsampled update costs each hop a look at the flags and a context flag, about a microsecond,
where a non-recording span cost ≈ 10 µs (BENCHMARKS.md, section 1b).
"""

from __future__ import annotations

import contextvars
import logging
import os
import secrets
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from bus.contract.envelope import FORWARDED_EXTENSIONS

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.sampling import Sampler

    from bus.contract.envelope import Envelope
    from domain.config import TelemetryConfig

log = logging.getLogger(__name__)

_PROPAGATOR = TraceContextTextMapPropagator()
_TRACER_NAME = "hotupdate"
_HEX = frozenset("0123456789abcdefABCDEF")
_MAX_LINKS = 128  # a batch span links to at most this many of its events' contexts
# The OpenTelemetry SDK's own sampler variables: when the operator sets them, they win over the config.
SAMPLER_ENV = "OTEL_TRACES_SAMPLER"


@dataclass
class _State:
    tracer: trace.Tracer | None = None  # set while tracing is on in this process
    # The sampler drops every span whose remote parent was not sampled (ParentBased's default),
    # so such a handler need not start one.
    drops_unsampled_parents: bool = False


_STATE = _State()  # process-wide, as OpenTelemetry's own tracer provider is

# True while a handler of an unsampled event runs (and in the tasks it starts, which copy the
# context): its remote commands make no span, which with no parent would start a trace of their own
# and hand its id to the events emitted after them, and its children carry the event's traceparent.
# A flag costs a fraction of a microsecond where attaching the unsampled parent's context for the
# SDK to make non-recording spans under would cost a parse of the traceparent on every event.
_UNSAMPLED = contextvars.ContextVar("hotupdate_unsampled_handler", default=False)


def enabled() -> bool:
    """True once :func:`setup_tracing` (or :func:`install`) turned tracing on in this process."""
    return _STATE.tracer is not None


def sampler(ratio: float) -> Sampler | None:
    """Parent-based ``ratio`` sampling; None when ``OTEL_TRACES_SAMPLER`` is set (the SDK then reads it)."""
    if os.environ.get(SAMPLER_ENV):
        return None
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    return ParentBased(TraceIdRatioBased(ratio))


def setup_tracing(telemetry: TelemetryConfig, service: str) -> Callable[[], None]:
    """Export this process's spans to ``telemetry.traces_endpoint`` (OTLP/HTTP); returns the flush-and-stop
    to call at exit.

    No endpoint: nothing is set up and the SDK is not imported. Traces started here are kept with
    probability ``telemetry.traces_sample_ratio`` (:func:`sampler`).
    """
    if not telemetry.traces_endpoint:
        return lambda: None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": service, "service.namespace": "hotupdate"}),
                              sampler=sampler(telemetry.traces_sample_ratio))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=telemetry.traces_endpoint)))
    install(provider)
    log.info("tracing: %s exports spans to %s (sampler %s)", service, telemetry.traces_endpoint,
             provider.sampler.get_description())
    return provider.shutdown


def install(provider: TracerProvider) -> None:
    """Make spans with ``provider`` (an SDK TracerProvider) in this process; for tests and benchmarks too."""
    # OpenTelemetry's global provider can be set once per process; the spans made here use the
    # tracer of the provider given, so a test or a benchmark can install another one.
    from opentelemetry.sdk.trace.sampling import ParentBased

    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        trace.set_tracer_provider(provider)
    _STATE.tracer = provider.get_tracer(_TRACER_NAME)
    # ParentBased as sampler() and the OTEL_TRACES_SAMPLER=parentbased_* values build it: an
    # unsampled remote parent gives an unsampled span (its ALWAYS_OFF default, which nothing here changes).
    _STATE.drops_unsampled_parents = isinstance(provider.sampler, ParentBased)


def disable() -> None:
    """Stop making spans in this process (the provider is left as it is); for tests and benchmarks."""
    _STATE.tracer = None


def _unsampled(envelope: Envelope) -> bool:
    """The envelope's well-formed ``traceparent`` says its trace is not sampled (W3C trace-flags bit 0)."""
    traceparent = (envelope.model_extra or {}).get("traceparent")
    if not isinstance(traceparent, str) or len(traceparent) != 55 or traceparent[52] != "-":
        return False
    # The sampled flag is bit 0 of the flags byte, so of its last hex digit; a malformed traceparent
    # (not hex) is not "unsampled": the SDK's extract then starts a new trace for it.
    return traceparent[54] in "02468aceACE" and traceparent[53] in _HEX


def _context_of(envelope: Envelope) -> otel_context.Context | None:
    extensions = envelope.model_extra or {}
    traceparent = extensions.get("traceparent")
    if not isinstance(traceparent, str):
        return None
    carrier = {"traceparent": traceparent}
    tracestate = extensions.get("tracestate")
    if isinstance(tracestate, str):
        carrier["tracestate"] = tracestate
    return _PROPAGATOR.extract(carrier)  # a malformed traceparent gives an empty context: a new trace


def _event_attributes(envelope: Envelope, service: str) -> dict[str, str]:
    return {"messaging.system": "rabbitmq", "messaging.destination.name": envelope.routing_key,
            "messaging.message.id": envelope.id, "cloudevents.event_type": envelope.type,
            "hotupdate.update_id": envelope.updateid, "hotupdate.service": service}


class handling:  # lower case: used as ``with tracing.handling(envelope, service):``, as span() is
    """Run a handler inside a consumer span continuing the envelope's trace (nothing when tracing is off).

    A class and not a generator, and the SDK's span started, attached and ended here rather than
    through ``start_as_current_span``: this runs once per event, and the two generator context
    managers that call stacks (``start_as_current_span`` in ``use_span``) cost about as much as the
    span's attributes on these VMs (BENCHMARKS.md, section 1b). The span's own ``__exit__`` records
    a handler's exception and marks the span as failed, as ``use_span`` would.
    """

    __slots__ = ("_attached", "_envelope", "_flag", "_service", "_span")

    def __init__(self, envelope: Envelope, service: str) -> None:
        self._envelope = envelope
        self._service = service
        self._span: trace.Span | None = None
        self._attached: contextvars.Token[otel_context.Context] | None = None
        self._flag: contextvars.Token[bool] | None = None

    def __enter__(self) -> None:
        tracer = _STATE.tracer
        if tracer is None:
            return
        envelope = self._envelope
        if _STATE.drops_unsampled_parents and _unsampled(envelope):
            self._flag = _UNSAMPLED.set(True)  # no span: the events emitted carry the envelope's context on
            return
        self._span = span = tracer.start_span(
            f"{envelope.event_name} process", context=_context_of(envelope), kind=trace.SpanKind.CONSUMER,
            attributes=_event_attributes(envelope, self._service))
        self._attached = otel_context.attach(trace.set_span_in_context(span))

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._span is not None and self._attached is not None:
            otel_context.detach(self._attached)
            self._span.__exit__(exc_type, exc, tb)  # records the exception, if any, and ends the span
        elif self._flag is not None:
            _UNSAMPLED.reset(self._flag)


@contextmanager
def handling_batch(envelopes: Sequence[Envelope], service: str) -> Iterator[None]:
    """A batch handler's span: a child of its first event's trace, linked to the traces of (up to 128 of) the rest."""
    tracer = _STATE.tracer
    if tracer is None:
        yield
        return
    parent = _context_of(envelopes[0]) if envelopes else None
    links = []
    for envelope in envelopes[1:_MAX_LINKS]:
        ctx = _context_of(envelope)
        if ctx is not None:
            links.append(trace.Link(trace.get_current_span(ctx).get_span_context()))
    with tracer.start_as_current_span(
        "batch process", context=parent, kind=trace.SpanKind.CONSUMER, links=links,
        attributes={"messaging.batch.message_count": len(envelopes), "hotupdate.service": service},
    ):
        yield


@contextmanager
def span(name: str, attributes: Mapping[str, str | int | bool] | None = None) -> Iterator[None]:
    """An internal span (a remote command, an rsync) in the current trace; nothing when tracing is off
    or the trace is not sampled."""
    tracer = _STATE.tracer
    if tracer is None or _UNSAMPLED.get():
        yield
        return
    with tracer.start_as_current_span(name, attributes=dict(attributes or {})):
        yield


def _injected() -> dict[str, str]:
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier


def child_extensions(parent: Envelope) -> dict[str, Any]:
    """The trace extensions of an event caused by ``parent``: the current span's, else the parent's as they came."""
    if _STATE.tracer is not None and not _UNSAMPLED.get() and (current := _injected()):
        return current
    extensions = parent.model_extra or {}
    return {name: extensions[name] for name in FORWARDED_EXTENSIONS if name in extensions}


def current_extensions() -> dict[str, str]:
    """The trace extensions of an envelope starting a chain: the current span's (none when not tracing)."""
    if _STATE.tracer is None:
        return {}
    return _injected()


def sampled_trace_headers() -> dict[str, str]:
    """A new trace's W3C ``traceparent`` header, marked sampled.

    A request that carries it is traced whole, whatever ``telemetry.traces_sample_ratio`` says: the
    CMDB's server span continues it and the parent-based sampler of every later hop follows its
    flag. So the ratio can stay low for the background picture while an operator asks for the one
    update to follow (``hotupdate update … --trace``). Built with the API only: no SDK in a client.
    """
    span_context = trace.SpanContext(trace_id=secrets.randbits(128) or 1, span_id=secrets.randbits(64) or 1,
                                     is_remote=False, trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED))
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(trace.NonRecordingSpan(span_context)))
    return carrier


class TracingMiddleware:
    """ASGI middleware: each HTTP request in a server span (continuing a caller's ``traceparent`` header).

    When tracing is off it only passes the request on.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        tracer = _STATE.tracer
        if tracer is None or scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", [])
                   if k in (b"traceparent", b"tracestate")}
        method = str(scope.get("method", "GET"))
        # The span name stays low-cardinality (no ids from the path); the path is an attribute.
        with tracer.start_as_current_span(
            f"HTTP {method}", context=_PROPAGATOR.extract(headers) if headers else None,
            kind=trace.SpanKind.SERVER,
            attributes={"http.request.method": method, "url.path": str(scope.get("path", ""))},
        ):
            await self.app(scope, receive, send)
