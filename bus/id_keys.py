"""The secret a component derives its event ids with, so nobody else can predict them.

A derived id (:func:`bus.contract.envelope.derived_event_id`) must be the same each time the component
that derives it re-runs a handler (downstream dedupes re-emitted events by id), and must not be
computable by anyone else: an id anyone can compute from a parent id shown on the dashboard can
be squatted by a decoy published first (issue 15). So the id is an HMAC under a key only the
deriving component has: derived from its own broker login (user and password), which it has
anyway, which differs per component instance once each logs in as its own user, and which never
travels on the bus. Rotating that password changes the key: rotate it between updates (a
handler re-run across a rotation re-emits its events under new ids). docs/audit.md, "Event ids".
"""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import unquote, urlsplit

from domain.broker_address import split_broker_urls

_CONTEXT = b"hotupdate derived event ids\x00"


def id_key_from_url(amqp_url: str) -> bytes:
    """The id key of the component that logs in with ``amqp_url`` (HMAC-SHA256 of its user, keyed by its password)."""
    parts = urlsplit(split_broker_urls(amqp_url)[0])  # every node of an address list is reached as one user
    user = unquote(parts.username or "")
    password = unquote(parts.password or "")
    return hmac.new(password.encode("utf-8"), _CONTEXT + user.encode("utf-8"), hashlib.sha256).digest()
