"""The on/off switch of the observability cost measurements (``--observability`` of bench.bus, bench.projection).

"Off": ConsumerService(metrics=False) and no tracing. "On": metrics counted (the default) and
tracing with the SDK set up: a span per handler (per batch for the projection), its context
injected into emitted envelopes, spans batched by the SDK's BatchSpanProcessor and handed to an
exporter that drops them (what an OTLP exporter adds is its own thread's serialising and
sending, outside the consumer's event loop).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

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
_PROVIDER: Any = None


def switch(on: bool) -> None:
    """Tracing on (SDK with a dropping exporter, set up once per process) or off (this module's fast path)."""
    global _PROVIDER
    if on:
        if _PROVIDER is None:
            _PROVIDER = TracerProvider()
            _PROVIDER.add_span_processor(BatchSpanProcessor(_EXPORTER))
        tracing.install(_PROVIDER)
    else:
        tracing._STATE.enabled = False  # the provider stays set; nothing calls it while off


def spans_exported() -> int:
    if _PROVIDER is not None:
        _PROVIDER.force_flush()
    return _EXPORTER.spans
