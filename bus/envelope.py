"""The CloudEvents 1.0 structured-JSON envelope every hotupdate event travels in.

Extensions carry what routing, ordering and auditing need: the hot update's id
(the seed's ``uuid``), project, area code, a per-update causal ``sequence``, and
correlation/causation ids linking each event to the one that caused it.
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from domain.types import AreaCode, ProjectKey

TYPE_RE = re.compile(r"^hotupdate\.(?P<name>[a-z_]+(?:\.[a-z_]+)*)\.v(?P<version>[1-9][0-9]*)$")
# Deterministic ids make a re-run handler emit the *same* events, so downstream
# deduplication by id turns at-least-once delivery into one effect.
_ID_NAMESPACE = uuid.UUID("6f1c3c2e-3f5a-4b8e-9a57-2d1b1f0c7a10")


class EnvelopeError(ValueError):
    """The bytes are not a well-formed hotupdate CloudEvent."""


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


def derived_event_id(causation_id: str, event_type: str, key: str = "") -> str:
    """A stable id for an event caused by ``causation_id`` (same cause, same key → same id)."""
    return str(uuid.uuid5(_ID_NAMESPACE, f"{causation_id}/{event_type}/{key}"))


def utcnow() -> datetime:
    return datetime.now(UTC)


class Envelope(BaseModel):
    """A CloudEvent with hotupdate's extensions; ``data`` is validated separately by the catalogue."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    specversion: Literal["1.0"] = "1.0"
    id: str = Field(default_factory=lambda: str(uuid.uuid4()), min_length=1, max_length=128)
    source: str = Field(min_length=1, max_length=256)
    type: Annotated[str, AfterValidator(_type_has_version)]
    time: datetime = Field(default_factory=utcnow)
    subject: str | None = Field(default=None, max_length=256)
    datacontenttype: Literal["application/json"] = "application/json"
    dataschema: str | None = None
    updateid: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9-]+$")
    project: ProjectKey
    area: AreaCode
    sequence: int = Field(ge=0)
    correlationid: str = Field(min_length=1, max_length=128)
    causationid: str | None = Field(default=None, max_length=128)
    # W3C trace context (CloudEvents distributed-tracing extension): which trace this event belongs to.
    traceparent: str | None = Field(default=None, pattern=r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")
    tracestate: str | None = Field(default=None, max_length=512, pattern=r"^[\x20-\x7e]*$")
    data: dict[str, Any]

    @field_validator("time")
    @classmethod
    def _time_is_aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("time must carry a timezone (RFC 3339)")
        return value

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
        try:  # the usual case in one pass; anything it refuses is parsed again below, to say why
            # what model_validate_json does, without its Python-level call
            envelope: Envelope = cls.__pydantic_validator__.validate_json(body)
            return envelope
        except ValidationError:
            pass
        try:
            raw = json.loads(body.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise EnvelopeError(f"body is not UTF-8: {exc}") from None
        except json.JSONDecodeError as exc:
            raise EnvelopeError(f"body is not JSON: {exc}") from None
        if not isinstance(raw, dict):
            raise EnvelopeError("body is not a JSON object")
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            raise EnvelopeError(f"invalid envelope: {describe_validation_error(exc)}") from None


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
