"""Type → model lookup, upcasting to the newest version, and building envelopes.

Upcasting lives here and only here: a consumer always receives the newest model
of an event, whatever version its producer still speaks.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import ValidationError
from pydantic_core import SchemaValidator

from bus.contract.envelope import Envelope, EnvelopeError, describe_validation_error, split_type
from bus.contract.events import CATALOGUE, Event

E = TypeVar("E", bound=Event)


class UnknownEventType(EnvelopeError):
    """The envelope's type or version is not in the catalogue."""


class InvalidEventData(EnvelopeError):
    """The envelope is fine but its ``data`` does not validate against its model."""


@dataclass(frozen=True)
class Registry:
    """All known (event name, version) pairs; each name's versions must run 1..N with no gap."""

    models: dict[tuple[str, int], type[Event]] = field(default_factory=dict)

    @classmethod
    def of(cls, models: Iterable[type[Event]]) -> Registry:
        table: dict[tuple[str, int], type[Event]] = {}
        for model in models:
            key = (model.event_name, model.event_version)
            if key in table:
                raise ValueError(f"{model.type_name()} is registered twice")
            table[key] = model
        for name, version in table:
            for older in range(1, version):
                if (name, older) not in table:
                    raise ValueError(f"hotupdate.{name}.v{version} has no v{older} to upcast from")
        return cls(table)

    def latest(self, name: str) -> type[Event]:
        model = self._latest.get(name)
        if model is None:
            raise UnknownEventType(f"unknown event 'hotupdate.{name}'")
        return model

    @functools.cached_property
    def _latest(self) -> dict[str, type[Event]]:
        """Each name's newest model (asked for once per delivery: worth keeping)."""
        out: dict[str, type[Event]] = {}
        for (name, _version), model in sorted(self.models.items()):
            out[name] = model  # sorted by version within a name: the last one wins
        return out

    def model_for(self, event_type: str) -> type[Event]:
        name, version = split_type(event_type)
        model = self.models.get((name, version))
        if model is None:
            known = sorted(f"v{v}" for (n, v) in self.models if n == name)
            if known:
                raise UnknownEventType(f"{event_type}: unknown version (known: {', '.join(known)})")
            raise UnknownEventType(f"{event_type}: unknown event type")
        return model

    @functools.cached_property
    def _decoders(self) -> dict[str, tuple[type[Event], Callable[..., Event], bool]]:
        """Per type string (``hotupdate.<name>.v<N>``, the one spelling :data:`TYPE_RE` accepts for it):
        its model, the model's validator and whether it is its name's newest: one dict lookup per
        delivery instead of parsing the type and looking the model up twice."""
        out: dict[str, tuple[type[Event], Callable[..., Event], bool]] = {}
        for (name, version), model in self.models.items():
            try:
                if split_type(model.type_name()) != (name, version):
                    continue
            except EnvelopeError:  # a name no envelope can carry: model_for refuses it, as it always did
                continue
            validator = model.__pydantic_validator__
            # model_validate(data) is validate_python(data) behind a Python-level call; a model not
            # fully built yet has a mock validator: keep model_validate for it.
            validate = validator.validate_python if isinstance(validator, SchemaValidator) else model.model_validate
            out[model.type_name()] = (model, validate, self.latest(name) is model)
        return out

    def decode(self, envelope: Envelope) -> Event:
        """Validate ``envelope.data`` against its model, then upcast it to the newest version."""
        known = self._decoders.get(envelope.type)
        if known is None:
            model = self.model_for(envelope.type)  # an unknown type or version: raises, saying which
            validate: Callable[..., Event] = model.model_validate
            newest = self.latest(model.event_name) is model
        else:
            model, validate, newest = known
        try:  # strict, as the JSON Schemas say: "1" is no integer, true is no 1
            event: Event = validate(envelope.data, strict=True)
        except ValidationError as exc:
            raise InvalidEventData(f"{envelope.type}: {describe_validation_error(exc)}") from None
        if newest:
            return event
        latest = self.latest(model.event_name)
        data: dict[str, Any] = event.model_dump(mode="json")
        for version in range(model.event_version + 1, latest.event_version + 1):
            data = self.models[(model.event_name, version)].upcast(data)
        try:
            return latest.model_validate(data)
        except ValidationError as exc:  # an upcaster bug, not the sender's: say so
            raise InvalidEventData(f"upcasting {envelope.type} failed: {describe_validation_error(exc)}") from None

    def type_names_of(self, name: str) -> tuple[str, ...]:
        """The type names of every version of event ``name``, oldest first."""
        return tuple(model.type_name() for (n, _v), model in sorted(self.models.items()) if n == name)

    def all_types(self) -> list[str]:
        return sorted(model.type_name() for model in self.models.values())


DEFAULT_REGISTRY = Registry.of(CATALOGUE)


def event_data(event: Event) -> dict[str, Any]:
    """The JSON-ready payload of an event, as it goes into ``Envelope.data``."""
    return event.model_dump(mode="json", exclude_none=True)


def make_envelope(
    event: Event,
    *,
    source: str,
    updateid: str,
    project: str,
    area: str,
    sequence: int = 0,
    correlationid: str | None = None,
    causationid: str | None = None,
    subject: str | None = None,
    event_id: str | None = None,
    extensions: dict[str, Any] | None = None,
) -> Envelope:
    """Wrap an event payload in its envelope (a fresh one starts a correlation chain of its own).

    ``extensions``: CloudEvents extensions to carry, such as a trace context (the CMDB passes its
    request span's, :func:`bus.tracing.current_extensions`); the contract itself knows no tracing.
    """
    env = Envelope(
        specversion="1.0",
        id=event_id or str(uuid.uuid4()),
        source=source,
        type=event.type_name(),
        subject=subject,
        dataschema=schema_uri(event.type_name()),
        updateid=updateid,
        project=project,
        area=area,
        sequence=sequence,
        correlationid=correlationid or updateid,
        causationid=causationid,
        data=event_data(event),
        **(extensions or {}),
    )
    return env


def schema_uri(event_type: str) -> str:
    """Where the JSON Schema of a type lives in this repository (``schemas/<type>.json``)."""
    return f"urn:hotupdate:schema:{event_type}"
