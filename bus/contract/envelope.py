"""The CloudEvents 1.0 structured-JSON envelope every hotupdate event travels in.

Extensions carry what routing, ordering and auditing need: the hot update's id
(the seed's ``uuid``), project, area code, a per-update causal ``sequence``, and
correlation/causation ids linking each event to the one that caused it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import from_json

from domain.json_values import CE_INT_MAX, CE_INT_MIN, CeSequence, Rfc3339Time, json_integer
from domain.types import AreaCode, ProjectKey

TYPE_RE = re.compile(r"^hotupdate\.(?P<name>[a-z_]+(?:\.[a-z_]+)*)\.v(?P<version>[1-9][0-9]*)$")
# Deterministic ids make a re-run handler emit the *same* events, so downstream
# deduplication by id turns at-least-once delivery into one effect.
_ID_NAMESPACE = uuid.UUID("6f1c3c2e-3f5a-4b8e-9a57-2d1b1f0c7a10")


class EnvelopeError(ValueError):
    """The bytes are not a well-formed hotupdate CloudEvent."""


TOO_DEEP = "body is not JSON: nesting too deep"


def split_type(event_type: str) -> tuple[str, int]:
    """Split ``hotupdate.ip.finished.v1`` into ``("ip.finished", 1)``."""
    match = TYPE_RE.fullmatch(event_type)
    if match is None:
        raise EnvelopeError(f"type {event_type!r} is not of the form hotupdate.<event>.v<N>")
    return match["name"], int(match["version"])


# The types split_type has taken: a handful, seen on every envelope (a set lookup instead of the regex).
# Short ones only, and a bounded number of them: a sender chooses the type.
_VALID_TYPES: set[str] = set()
_VALID_TYPES_MAX = 1024


def _type_has_version(value: str) -> str:
    """``type`` as given, if :func:`split_type` takes it; raises its :class:`EnvelopeError` if not."""
    if value not in _VALID_TYPES:
        split_type(value)
        if len(value) <= 128 and len(_VALID_TYPES) < _VALID_TYPES_MAX:
            _VALID_TYPES.add(value)
    return value


# CloudEvents extension attributes the catalogue does not define (traceparent, tracestate, a tool's own)
# are carried, not refused. Names: lowercase letters and digits (the CloudEvents rule; its 20-character
# advice is not enforced). Values: the JSON forms of the CloudEvents types (String, Boolean, Integer).
EXTENSION_NAME_PATTERN = r"^[a-z0-9]{1,64}$"
# The declared attributes of each envelope class: the validator below runs on every envelope
# decoded, and pydantic's model_fields is a computed class property (≈ 1 µs a look, 14 looks).
_FIELDS: dict[type[BaseModel], frozenset[str]] = {}
_EXTENSION_NAME = re.compile(EXTENSION_NAME_PATTERN)
EXTENSION_VALUE_MAX_LENGTH = 4096
# Extensions a child event inherits from its cause: W3C trace context (the CloudEvents distributed
# tracing extension), so a trace follows an update through every component.
FORWARDED_EXTENSIONS = ("traceparent", "tracestate")


def _extension_value(name: str, value: Any) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        if len(value) > EXTENSION_VALUE_MAX_LENGTH:
            raise ValueError(f"extension {name!r}: longer than {EXTENSION_VALUE_MAX_LENGTH} characters")
        return value
    if isinstance(value, int | float):
        try:
            number = json_integer(value)
        except ValueError:
            raise ValueError(f"extension {name!r}: must be a string, boolean or integer") from None
        if not CE_INT_MIN <= number <= CE_INT_MAX:
            raise ValueError(f"extension {name!r}: an integer outside the CloudEvents Integer range")
        return number
    raise ValueError(f"extension {name!r}: must be a string, boolean or integer (CloudEvents attribute types)")


EXTENSION_SCHEMA: dict[str, Any] = {
    "description": "a CloudEvents extension attribute the catalogue does not define (traceparent, …): carried",
    "anyOf": [
        {"type": "string", "maxLength": EXTENSION_VALUE_MAX_LENGTH},
        {"type": "boolean"},
        {"type": "integer", "minimum": CE_INT_MIN, "maximum": CE_INT_MAX},
    ],
}
"""What the JSON Schemas say of an extension's value (``additionalProperties``): as _extension_value checks."""


def derived_event_id(causation_id: str, event_type: str, key: str = "", *, secret: bytes | None = None) -> str:
    """A stable id for an event caused by ``causation_id`` (same cause, same key → same id).

    With ``secret`` (the deriving component's id key, :func:`bus.id_keys.id_key_from_url`) the id
    is an HMAC under it, shaped as a UUID: stable for that component, unpredictable to anyone
    without the key, so nobody can publish a decoy under a future event's id. Without it, the
    public uuid5 that anyone who saw ``causation_id`` can compute: for tests and examples only;
    every component's composition root passes its key.
    """
    text = f"{causation_id}/{event_type}/{key}"
    if secret is None:
        return str(uuid.uuid5(_ID_NAMESPACE, text))
    digest = hmac.new(secret, text.encode("utf-8"), hashlib.sha256).digest()
    return str(uuid.UUID(bytes=digest[:16], version=4))


def utcnow() -> datetime:
    return datetime.now(UTC)


# What makes two envelopes with one id the same fact: a re-emitted event (a handler re-run after a
# redelivery or a restart) keeps its derived id and payload but gets a new time and may get another
# sequence. Anything else under a known id is a conflict, raised to operators, never a duplicate.
FACT_FIELDS = ("type", "source", "updateid", "project", "area", "data")
# How the reason of an event parked as such a conflict starts (the dashboard and `parked list` show it as one).
CONFLICT_PREFIX = "conflict:"


def fact_hash(envelope: Envelope) -> str:
    """sha256 (hex) of the envelope's :data:`FACT_FIELDS`: equal for a duplicate, different for a conflict."""
    dumped = envelope.model_dump(mode="json", exclude_none=True)
    return hashlib.sha256(canonical_json({name: dumped.get(name) for name in FACT_FIELDS})).hexdigest()


class Envelope(BaseModel):
    """A CloudEvent with hotupdate's extensions; ``data`` is validated separately by the catalogue."""

    # extra="allow": unknown CloudEvents extensions are kept (checked in _extensions), in
    # ``model_extra``, in to_bytes() and so in the event log's hash chain.
    model_config = ConfigDict(frozen=True, extra="allow", allow_inf_nan=False)

    # No defaults for id and specversion: an event without an id would get a new one from each
    # consumer, defeating de-duplication. Builders (make_envelope, child_envelope) set both.
    specversion: Literal["1.0"]
    id: str = Field(min_length=1, max_length=128)
    source: str = Field(min_length=1, max_length=256)
    type: Annotated[str, AfterValidator(_type_has_version)]
    time: Rfc3339Time = Field(default_factory=utcnow)
    subject: str | None = Field(default=None, max_length=256)
    datacontenttype: Literal["application/json"] = "application/json"
    dataschema: str | None = None
    updateid: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9-]+$")
    project: ProjectKey
    area: AreaCode
    sequence: CeSequence
    correlationid: str = Field(min_length=1, max_length=128)
    causationid: str | None = Field(default=None, max_length=128)
    data: dict[str, Any]

    @model_validator(mode="before")
    @classmethod
    def _extensions(cls, raw: Any) -> Any:
        if not isinstance(raw, dict):
            return raw
        fields = _FIELDS.get(cls) or _FIELDS.setdefault(cls, frozenset(cls.model_fields))  # once per class
        extensions = [name for name in raw if name not in fields]
        if not extensions:
            return raw
        out = dict(raw)
        for name in extensions:
            if not isinstance(name, str) or _EXTENSION_NAME.fullmatch(name) is None:
                raise ValueError(f"{name!r} is not a CloudEvents attribute name (lowercase letters and digits)")
            out[name] = _extension_value(name, raw[name])
        return out

    @property
    def extensions(self) -> dict[str, Any]:
        """The CloudEvents extension attributes the catalogue does not define, as received."""
        return dict(self.model_extra or {})

    @property
    def event_name(self) -> str:
        return split_type(self.type)[0]

    @property
    def event_version(self) -> int:
        return split_type(self.type)[1]

    @property
    def routing_key(self) -> str:
        name, version = split_type(self.type)
        return routing_key(self.project, self.area, name, version)

    def to_bytes(self) -> bytes:
        """Canonical JSON bytes (sorted keys, UTF-8) as published and as hashed in the event log."""
        return canonical_json(self.model_dump(mode="json", exclude_none=True))

    @classmethod
    def from_bytes(cls, body: bytes) -> Envelope:
        """Parse a message body; raise :class:`EnvelopeError` with the reason if it is not an envelope."""
        # Strict: a JSON string is not an integer, true is not 1, a number is not a time; what the
        # published JSON Schemas say (tests/unit/test_contract_agreement.py compares both verdicts).
        try:  # the usual case in one pass (parsed in Rust, NaN and Infinity refused as the JSON spec does)
            raw = from_json(body, allow_inf_nan=False)
        except ValueError:
            raw = _parse_to_say_why(body)
        if not isinstance(raw, dict):
            raise EnvelopeError("body is not a JSON object")
        try:
            envelope: Envelope = cls.__pydantic_validator__.validate_python(raw, strict=True)
            return envelope
        except ValidationError as exc:
            raise EnvelopeError(f"invalid envelope: {describe_validation_error(exc)}") from None
        except RecursionError:
            raise EnvelopeError(TOO_DEEP) from None


def _parse_to_say_why(body: bytes) -> Any:
    def refuse_constant(name: str) -> Any:
        raise EnvelopeError(f"body is not JSON: {name} is not a JSON number")

    try:
        json.loads(body.decode("utf-8"), parse_constant=refuse_constant)
    except UnicodeDecodeError as exc:
        raise EnvelopeError(f"body is not UTF-8: {exc}") from None
    except json.JSONDecodeError as exc:
        raise EnvelopeError(f"body is not JSON: {exc}") from None
    except RecursionError:  # a sender chooses the depth; Python's parser recurses once per level
        raise EnvelopeError(TOO_DEEP) from None
    raise EnvelopeError(TOO_DEEP)  # what pydantic's parser refuses and Python's takes: nesting beyond its limit


def routing_key(project: str, area: str, event_name: str, version: int) -> str:
    """``<project>.<area>.<event>.v<N>``: consumers bind by project first."""
    return f"{project}.{area}.{event_name}.v{version}"


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def describe_validation_error(exc: ValidationError, limit: int = 10) -> str:
    """One line naming each offending field: ``data.version: String should match …``."""
    parts = []
    for err in exc.errors()[:limit]:
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        parts.append(f"{where}: {err['msg']}")
    more = exc.error_count() - limit
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")
