"""The CMDB's door: a request is authenticated, and its declared size checked, before its body is read.

FastAPI reads (and parses) a route's body before it resolves the route's dependencies, so a bearer
token checked by a dependency is checked after the whole body is in memory: 200 MB sent without a
token were read first. This ASGI middleware answers 401 from the headers alone, and 413 for a declared
``Content-Length`` over the limit, without reading a byte of the body, and counts the bytes of a body
sent without a length (chunked), stopping at the limit. A refused request's connection is closed
after the answer, so the rest of its body is not drained either. (FastAPI's ``max_body_size`` is not
used: it sits outside every middleware and turns a 401 for a large declared body into a 413.)
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from domain.config import Operator
from producers.cmdb.auth import operator_for

log = logging.getLogger(__name__)

OPERATOR_STATE_KEY = "operator"  # request.state.operator: the authenticated operator's name
# /metrics checks its callers itself (loopback or the metrics token: observability.py)
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/metrics",
                          "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
MISSING_TOKEN_DETAIL = "a valid operator token is required (Authorization: Bearer <token>)"  # noqa: S105 - a message, not a secret


class RequestGuard:
    """ASGI middleware: 401 for a missing or unknown bearer token, 413 for a declared body over the limit."""

    def __init__(self, app: ASGIApp, *, operators: Sequence[Operator], max_body_bytes: int) -> None:
        self.app = app
        self.operators = list(operators)
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["path"] not in PUBLIC_PATHS:
            operator = operator_for(_bearer_token(scope), self.operators)
            if operator is None:
                log.warning("refused a request without a valid operator token: %s %s", scope["method"], scope["path"])
                await _refuse(send, 401, MISSING_TOKEN_DETAIL, {"www-authenticate": "Bearer"})
                return
            scope.setdefault("state", {})[OPERATOR_STATE_KEY] = operator
        length = _header(scope, b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            log.warning("refused a %s-byte body (limit %d) to %s", length, self.max_body_bytes, scope["path"])
            await _refuse(send, 413, self._too_large, {})
            return
        await self.app(scope, self._counting(receive, scope["path"]), send)

    @property
    def _too_large(self) -> str:
        return f"the request body is over {self.max_body_bytes} bytes"

    def _counting(self, receive: Receive, path: str) -> Receive:
        """``receive`` that stops a body sent without a length (chunked) once it passes the limit."""
        received = 0

        async def within_limit() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    log.warning("cut off a body at %d bytes (limit %d) to %s", received, self.max_body_bytes, path)
                    # FastAPI passes an HTTPException raised while reading the body on to its handler
                    raise HTTPException(413, self._too_large, headers={"connection": "close"})
            return message

        return within_limit


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key.lower() == name:
            return bytes(value).decode("latin-1").strip()
    return None


def _bearer_token(scope: Scope) -> str:
    scheme, _, token = (_header(scope, b"authorization") or "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


async def _refuse(send: Send, status: int, detail: str, headers: dict[str, str]) -> None:
    body = json.dumps({"detail": detail}).encode()
    start: Message = {
        "type": "http.response.start",
        "status": status,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),  # the unread body is not worth draining
            *((k.encode(), v.encode()) for k, v in headers.items()),
        ],
    }
    await send(start)
    await send({"type": "http.response.body", "body": body})
