"""Operators' bearer tokens: only their sha256 is configured (``cmdb.operators``), never the token."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from domain.config import Operator


def hash_token(token: str) -> str:
    """The sha256 hex digest stored in the configuration for ``token``."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    """A fresh random token for a new operator."""
    return secrets.token_urlsafe(32)


def operator_for(token: str, operators: list[Operator]) -> str | None:
    """The name of the operator whose token this is, or None.

    Every configured digest is compared in constant time, and all of them are, so the
    time taken says nothing about which operator (if any) came close.
    """
    if not token:
        return None
    digest = hash_token(token)
    found: str | None = None
    for operator in operators:
        if hmac.compare_digest(digest, operator.token_sha256) and found is None:
            found = operator.name
    return found

