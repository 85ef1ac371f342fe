"""A recording Emitter, so a handler can be tested directly without a broker."""

from __future__ import annotations

from typing import TypeVar

from bus.contract.envelope import Envelope
from bus.contract.events import Event
from bus.contract.registry import make_envelope
from bus.handling import Incoming, child_envelope

E = TypeVar("E", bound=Event)


class RecordingEmitter:
    """Keeps what a handler emits, with the envelopes the runtime would have published."""

    def __init__(self, parent: Envelope, source: str = "tests/recording") -> None:
        self.parent = parent
        self.source = source
        self.events: list[Event] = []
        self.envelopes: list[Envelope] = []

    async def emit(self, event: Event, *, key: str = "", subject: str | None = None) -> Envelope:
        env = child_envelope(
            self.parent, event, source=self.source, offset=len(self.events) + 1, key=key, subject=subject
        )
        self.events.append(event)
        self.envelopes.append(env)
        return env

    @property
    def only(self) -> Event:
        """The single event emitted (fails the test otherwise)."""
        assert len(self.events) == 1, f"expected one event, got {self.events!r}"
        return self.events[0]


def incoming(event: E, *, project: str = "ssss", area: str = "cn", updateid: str = "u-1",
             redelivered: bool = False) -> tuple[Incoming[E], RecordingEmitter]:
    """A delivered ``event`` as a handler sees it, and an emitter recording what it causes."""
    env = make_envelope(event, source="tests", updateid=updateid, project=project, area=area)
    return Incoming(env, event, redelivered=redelivered), RecordingEmitter(env)
