"""JSON value types that validate exactly as the published JSON Schemas say.

The event models run in pydantic's strict mode, so ``"1"`` and ``true`` are not integers; these
types cover what strict mode alone gets wrong against JSON Schema: an integral number such as
``1.0`` *is* a JSON Schema integer, integers are bounded so every consumer (JavaScript included)
reads the same value, and a time is RFC 3339 text, never a Unix number.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any

from annotated_types import Interval
from pydantic import BeforeValidator, WithJsonSchema

MAX_JSON_INT = 2**53 - 1
"""I-JSON (RFC 7493): beyond this, JavaScript and many JSON parsers silently round an integer."""

CE_INT_MIN, CE_INT_MAX = -(2**31), 2**31 - 1
"""The CloudEvents ``Integer`` type (32-bit signed): ``sequence`` and integer-valued extensions."""


def json_integer(value: Any) -> Any:
    # JSON Schema's "integer" is any number with a zero fraction (1.0 included), never a boolean
    # or a string; strict int would refuse 1.0, lax int would take "1" and true.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be a JSON integer")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError("must be a JSON integer")
        return int(value)
    return value


# The bounds go inside each alias, left of the validator: a field's own Field(ge=…) after a
# BeforeValidator would be checked but left out of the JSON Schema (or dropped), so each range
# the catalogue uses is a type of its own.
JsonInt = Annotated[int, Interval(ge=-MAX_JSON_INT, le=MAX_JSON_INT), BeforeValidator(json_integer)]
"""An integer as JSON Schema means it, within the I-JSON range."""
Count = Annotated[int, Interval(ge=0, le=MAX_JSON_INT), BeforeValidator(json_integer)]
"""A count or size: 0 up to the I-JSON limit."""
Ordinal = Annotated[int, Interval(ge=1, le=MAX_JSON_INT), BeforeValidator(json_integer)]
"""A 1-based number (a batch) or a positive count."""
Percent = Annotated[int, Interval(ge=1, le=100), BeforeValidator(json_integer)]
Port = Annotated[int, Interval(ge=1, le=65535), BeforeValidator(json_integer)]
CeSequence = Annotated[int, Interval(ge=0, le=CE_INT_MAX), BeforeValidator(json_integer)]
"""The envelope's ``sequence``: a CloudEvents Integer (32-bit signed), not negative."""

RFC3339_PATTERN = (
    r"^(?!0000)[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])[Tt]([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]"
    r"(\.[0-9]{1,9})?([Zz]|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$"
)
_RFC3339 = re.compile(RFC3339_PATTERN)


def _rfc3339_time(value: Any) -> Any:
    # Python callers pass datetimes; a document passes text. pydantic alone would also take a Unix
    # number or a date without a time, which the schema's "date-time" does not. Parsed here, so
    # strict validation (which wants a datetime object) applies to documents too.
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("time must carry a timezone (RFC 3339)")
        return value
    if not isinstance(value, str) or _RFC3339.fullmatch(value) is None:
        raise ValueError("must be an RFC 3339 date-time text with a timezone (2026-11-24T06:05:00Z)")
    try:
        return datetime.fromisoformat(value.upper())  # RFC 3339 allows 't' and 'z'
    except ValueError:  # a day the month does not have
        raise ValueError(f"{value!r} is not a valid date-time") from None


Rfc3339Time = Annotated[
    datetime,
    BeforeValidator(_rfc3339_time),
    WithJsonSchema({"type": "string", "format": "date-time", "pattern": RFC3339_PATTERN}),
]
"""A timezone-aware time, written as RFC 3339 text."""
