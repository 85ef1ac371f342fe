"""How a webhook call is signed, and how a receiver checks it.

The scheme (also in docs/notifications.md), for every attempt:

- ``X-Hotupdate-Timestamp``: the attempt's time, whole seconds since the Unix epoch, as ASCII digits.
- ``X-Hotupdate-Signature``: ``sha256=`` followed by the lowercase hex HMAC-SHA256, keyed with the
  webhook's secret (its UTF-8 bytes), of the *signed material*: the timestamp's ASCII digits, one
  ``.`` (0x2E), then the exact bytes of the request body, i.e. ``b"<timestamp>." + body``.

The body of one notification is the same on every attempt; the timestamp (and so the signature)
is fresh on each one. Signing the timestamp with the body lets a receiver refuse a captured
request replayed later: it recomputes the HMAC, compares with :func:`hmac.compare_digest`, and
rejects timestamps too far from its own clock (five minutes is the usual tolerance).
"""

from __future__ import annotations

import hashlib
import hmac

SIGNATURE_PREFIX = "sha256="
DEFAULT_TOLERANCE_SECONDS = 300


def signed_material(timestamp: int, body: bytes) -> bytes:
    """The bytes the HMAC covers: ``b"<timestamp>." + body``."""
    return str(timestamp).encode("ascii") + b"." + body


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """The ``X-Hotupdate-Signature`` value for ``body`` sent at ``timestamp``."""
    digest = hmac.new(secret, signed_material(timestamp, body), hashlib.sha256).hexdigest()
    return SIGNATURE_PREFIX + digest


def verify(
    secret: bytes,
    timestamp_header: str,
    body: bytes,
    signature_header: str,
    *,
    now: float,
    tolerance_seconds: float = DEFAULT_TOLERANCE_SECONDS,
) -> bool:
    """A receiver's check: the signature matches and the timestamp is within ``tolerance_seconds`` of ``now``."""
    if not timestamp_header.isascii() or not timestamp_header.isdigit():
        return False
    timestamp = int(timestamp_header)
    if abs(now - timestamp) > tolerance_seconds:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), signature_header)
