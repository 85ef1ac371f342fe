"""Who may say what: an event whose ``source`` could not have produced it is parked.

Every event type names its producing component in the catalogue; a source is accepted
when it is ``hotupdate/<producer>`` or below it (``hotupdate/ops_executor/ops1``), or a
tool the configuration allows for that event (another team's publisher).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from bus.envelope import Envelope
from bus.events import CATALOGUE, Event


@dataclass(frozen=True)
class Provenance:
    """Allowed source prefixes per event name."""

    allowed: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def from_catalogue(
        cls, catalogue: Iterable[type[Event]] = CATALOGUE, extra: Mapping[str, Iterable[str]] | None = None
    ) -> Provenance:
        """Each event from its catalogue producer, plus ``extra`` sources per event name (tools)."""
        table: dict[str, tuple[str, ...]] = {}
        for model in catalogue:
            table[model.event_name] = (f"hotupdate/{model.producer}",)
        for name, sources in (extra or {}).items():
            table[name] = (*table.get(name, ()), *sources)
        return cls(table)

    def problem(self, envelope: Envelope) -> str | None:
        """None if ``envelope.source`` may publish its type, else the reason to park it."""
        allowed = self.allowed.get(envelope.event_name)
        if allowed is None:
            return None
        for prefix in allowed:
            if envelope.source == prefix or envelope.source.startswith(prefix + "/"):
                return None
        return (
            f"provenance: source {envelope.source!r} may not publish {envelope.type} "
            f"(allowed: {', '.join(allowed)})"
        )
