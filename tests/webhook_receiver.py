"""A real local HTTP webhook receiver for notifier tests: checks signatures, fails on demand, records calls.

It checks the signature the way docs/notifications.md tells a receiver to (its own HMAC,
not the notifier's code), answers 401 to a bad one, and otherwise answers with whatever
status the test asked for.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Call:
    headers: dict[str, str]  # lower-cased names
    body: bytes
    verified: bool
    answered: int
    at: float


def signature_ok(secret: bytes, headers: dict[str, str], body: bytes, tolerance: float = 300) -> bool:
    """The documented check: HMAC-SHA256 of b"<timestamp>." + body, hex, after "sha256=", timestamp fresh."""
    timestamp = headers.get("x-hotupdate-timestamp", "")
    signature = headers.get("x-hotupdate-signature", "")
    if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > tolerance:
        return False
    expected = "sha256=" + hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, signature)


class WebhookReceiver:
    """``with WebhookReceiver(secret) as hook:`` then ``hook.url``; ``fail_next(2)``, ``always(400)``, ``calls``."""

    def __init__(self, secret: bytes) -> None:
        self.secret = secret
        self.calls: list[Call] = []
        self._lock = threading.Lock()
        self._failures: list[int] = []
        self._status = 200
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def fail_next(self, count: int, status: int = 500) -> None:
        """Answer the next ``count`` calls with ``status`` (then the usual status again)."""
        with self._lock:
            self._failures = [status] * count

    def always(self, status: int) -> None:
        """Answer every call (after any queued failures) with ``status``."""
        with self._lock:
            self._status = status

    def _answer(self, headers: dict[str, str], body: bytes) -> int:
        verified = signature_ok(self.secret, headers, body)
        with self._lock:
            status = self._failures.pop(0) if self._failures else self._status
            if not verified:
                status = 401
            self.calls.append(Call(headers, body, verified, status, time.monotonic()))
        return status

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/hooks/hotupdate"

    def __enter__(self) -> WebhookReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                status = receiver._answer({k.lower(): v for k, v in self.headers.items()}, body)
                reply = b"{}" if status < 300 else b'{"error": "no thanks"}'
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="webhook-receiver", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None and self._thread is not None
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[Call]:
        deadline = time.monotonic() + timeout
        while len(self.calls) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"expected {count} webhook calls, got {len(self.calls)} in {timeout}s")
            await asyncio.sleep(0.02)
        return list(self.calls)


def closed_port_url() -> str:
    """A loopback URL nothing listens on: connections are refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/hooks/down"
