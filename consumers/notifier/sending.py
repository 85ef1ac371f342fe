"""One signed POST of a notification, and what its answer means for the next one.

2xx is delivered. 408, 429, 5xx, timeouts and connection errors are worth retrying. Any
other answer (other 4xx; 3xx, since redirects are not followed and a notification should
not be re-sent somewhere else) will not change by asking again: the delivery fails at once.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Literal

import httpx

from consumers.notifier.signing import sign
from consumers.notifier.webhooks import Endpoint

Outcome = Literal["delivered", "retry", "rejected"]

USER_AGENT = "hotupdate-notifier/1"
ERROR_BODY_LIMIT = 300  # enough of a refusal's body to tell why, without storing a whole error page


@dataclass(frozen=True)
class CallResult:
    """What one HTTP call gave: the outcome, the status if there was an answer, and an error text if not 2xx."""

    outcome: Outcome
    delivery_uuid: str
    status_code: int | None
    error: str
    duration_ms: int
    retry_after_seconds: float | None = None


def classify(status_code: int) -> Outcome:
    """What an HTTP status means for this delivery."""
    if 200 <= status_code < 300:
        return "delivered"
    if status_code in (408, 429) or status_code >= 500:
        return "retry"
    return "rejected"


def backoff_seconds(attempts_made: int, first: float, ceiling: float, retry_after: float | None = None) -> float:
    """Wait before the next attempt: ``first`` doubled per attempt made, at least the server's Retry-After."""
    delay: float = first * 2.0 ** max(attempts_made - 1, 0)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return min(delay, ceiling)


def headers_for(
    endpoint: Endpoint, body: bytes, *, event_id: str, delivery_uuid: str, timestamp: int
) -> dict[str, str]:
    """The request headers of one attempt (see :mod:`consumers.notifier.signing` for the signature)."""
    return {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "X-Hotupdate-Event-Id": event_id,
        "X-Hotupdate-Delivery": delivery_uuid,
        "X-Hotupdate-Timestamp": str(timestamp),
        "X-Hotupdate-Signature": sign(endpoint.secret, timestamp, body),
    }


async def post_notification(client: httpx.AsyncClient, endpoint: Endpoint, body: bytes, *, event_id: str) -> CallResult:
    """POST ``body`` to ``endpoint`` once, signed now; never raises for network or HTTP trouble."""
    delivery_uuid = str(uuid.uuid4())
    headers = headers_for(endpoint, body, event_id=event_id, delivery_uuid=delivery_uuid, timestamp=int(time.time()))
    started = time.monotonic()

    def elapsed_ms() -> int:
        return int((time.monotonic() - started) * 1000)

    try:
        async with client.stream(
            "POST", endpoint.url, content=body, headers=headers,
            timeout=endpoint.config.timeout_seconds, follow_redirects=False,
        ) as response:
            outcome = classify(response.status_code)
            error = "" if outcome == "delivered" else await _refusal(response)
            return CallResult(outcome, delivery_uuid, response.status_code, error, elapsed_ms(),
                              _retry_after(response) if outcome == "retry" else None)
    except httpx.TimeoutException as exc:
        return CallResult("retry", delivery_uuid, None,
                          f"timed out after {endpoint.config.timeout_seconds:g}s ({type(exc).__name__})", elapsed_ms())
    except httpx.TransportError as exc:  # refused, reset, DNS, TLS: the network, not the receiver's answer
        return CallResult("retry", delivery_uuid, None, f"{type(exc).__name__}: {exc}", elapsed_ms())
    except httpx.HTTPError as exc:  # e.g. an invalid URL: asking again cannot help
        return CallResult("rejected", delivery_uuid, None, f"{type(exc).__name__}: {exc}", elapsed_ms())


async def _refusal(response: httpx.Response) -> str:
    text = ""
    try:
        async for chunk in response.aiter_bytes():
            text += chunk.decode("utf-8", "replace")
            if len(text) >= ERROR_BODY_LIMIT:
                break
    except httpx.HTTPError:  # the status is what matters; a body cut short changes nothing
        pass
    text = " ".join(text.split())[:ERROR_BODY_LIMIT]
    phrase = response.reason_phrase or ""
    return f"HTTP {response.status_code} {phrase}".rstrip() + (f": {text}" if text else "")


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "").strip()
    return float(value) if value.isdigit() else None
