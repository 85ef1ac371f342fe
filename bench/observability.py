"""The on/off switch of the observability cost measurements (``--observability`` of bench.bus, bench.projection).

"Off": ConsumerService(metrics=False) and no tracing. "On": metrics counted (the default) and
tracing with the SDK set up and parent-based ratio sampling (the configured default unless a
ratio is given): a span per handler (per batch for the projection), recording when sampled, its
context injected into emitted envelopes, spans batched by the SDK's BatchSpanProcessor and handed to an
exporter that drops them (what an OTLP exporter adds is its own thread's serialising and
sending, outside the consumer's event loop).
"""

from __future__ import annotations

from collections.abc import Sequence

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from bus import tracing


class _Dropping(SpanExporter):
    def __init__(self) -> None:
        self.spans = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


_EXPORTER = _Dropping()
_PROVIDERS: dict[float, TracerProvider] = {}


def switch(on: bool, sample_ratio: float = 1.0) -> None:
    """Tracing on (the SDK, parent-based ``sample_ratio`` sampling, a dropping exporter) or off (the fast path)."""
    if not on:
        tracing.disable()  # the providers stay; nothing calls them while off
        return
    provider = _PROVIDERS.get(sample_ratio)
    if provider is None:
        provider = _PROVIDERS[sample_ratio] = TracerProvider(sampler=tracing.sampler(sample_ratio))
        provider.add_span_processor(BatchSpanProcessor(_EXPORTER))
    tracing.install(provider)


def spans_exported() -> int:
    """Spans the exporter was handed so far (unsampled spans never reach it)."""
    for provider in _PROVIDERS.values():
        provider.force_flush()
    return _EXPORTER.spans
