"""What a handler sees: the incoming event, and an emitter for the events it causes.

Handlers are plain ``async def handle(msg: Incoming[SomeEvent], emit: Emitter, …deps)``
functions; a consumer's composition root binds their dependencies and registers one
handler per event type with :class:`bus.consumer.ConsumerService`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from bus.contract.envelope import Envelope, derived_event_id
from bus.contract.events import Event
from bus.contract.registry import event_data, schema_uri
from bus.tracing import child_extensions

E_co = TypeVar("E_co", bound=Event, covariant=True)


@dataclass(frozen=True)
class Incoming(Generic[E_co]):
    """A delivered event: its envelope as received and its payload upcast to the newest model."""

    envelope: Envelope
    event: E_co
    redelivered: bool = False
    replayed: bool = False
    body: bytes = b""  # the message body as delivered (empty when not from a delivery), for handing on as is
    # The AMQP ``user_id`` of the delivery: RabbitMQ refuses a publish whose user_id is not the
    # connection's login, so this is the one statement about the sender the broker has verified.
    # Empty when the publisher set none (or the event did not come from a delivery).
    publisher: str = ""


class Emitter(Protocol):
    """Publishes events caused by the one being handled, with confirms, before the handler returns."""

    async def emit(self, event: Event, *, key: str = "", subject: str | None = None) -> Envelope:
        """Publish ``event``; ``key`` tells apart several events of one type (an IP, a CDN dir)."""
        ...


Handler = Callable[[Incoming[Event], Emitter], Awaitable[None]]


def child_envelope(
    parent: Envelope,
    event: Event,
    *,
    source: str,
    offset: int,
    key: str = "",
    subject: str | None = None,
    id_key: bytes | None = None,
) -> Envelope:
    """The envelope of an event caused by ``parent``.

    Its id is derived from the parent's id, the type and ``key``, so re-handling a
    redelivered parent re-emits events with the same ids, which downstream dedupes;
    ``id_key`` (the emitting component's, :mod:`bus.id_keys`) makes it unpredictable to others.
    ``sequence`` continues the parent's, ordering an update's events causally.
    """
    event_type = event.type_name()
    # Trace context follows the cause (the CloudEvents distributed tracing extension): the
    # handler's span when this process traces, else the parent's as it came; other extensions
    # described the parent only.
    inherited = child_extensions(parent)
    return Envelope(
        specversion="1.0",
        id=derived_event_id(parent.id, event_type, key, secret=id_key),
        source=source,
        type=event_type,
        subject=subject if subject is not None else parent.subject,
        dataschema=schema_uri(event_type),
        updateid=parent.updateid,
        project=parent.project,
        area=parent.area,
        sequence=parent.sequence + offset,
        correlationid=parent.correlationid,
        causationid=parent.id,
        data=event_data(event),
        **inherited,
    )
