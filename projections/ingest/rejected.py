"""Messages the projection's consumer parked, kept so the dashboard can list them with their reason."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from projections import log as event_log
from projections.models import RejectedEvent


def record_rejection(
    engine: Engine,
    *,
    service: str,
    reason: str,
    body: bytes,
    routing_key: str,
    message_id: str | None,
    attempt: int,
    parked_at: datetime,
) -> int:
    """Keep a message the projection's consumer parked, so the dashboard can list it; returns its row id.

    The same body parked again for the same reason (a redelivery) only bumps ``times``.
    """
    reason = _clean(reason)
    dedupe_key = hashlib.sha256(body + b"\x00" + reason.encode("utf-8")).hexdigest()
    parked_at = parked_at.astimezone(UTC)
    fields = _envelope_fields(body)
    with Session(engine) as session, session.begin():
        head = event_log.lock_head(session)  # also serialises with appenders; bumps the change counter
        row = session.execute(
            select(RejectedEvent).where(RejectedEvent.dedupe_key == dedupe_key)
        ).scalar_one_or_none()
        if row is None:
            row = RejectedEvent(
                dedupe_key=dedupe_key,
                service=_clip(service, 128) or "?",
                reason=reason,
                routing_key=_clip(_clean(routing_key), 256) or "",
                message_id=_clip(_clean(message_id), 256) if message_id else None,
                body=_clean(body.decode("utf-8", errors="replace")),
                body_bytes=len(body),
                attempt=attempt,
                first_parked_at=parked_at,
                last_parked_at=parked_at,
                times=1,
                **fields,
            )
            session.add(row)
        else:
            row.times += 1
            row.attempt = max(row.attempt, attempt)
            row.last_parked_at = parked_at
        head.version += 1
        event_log.store_head(session, head)
        session.flush()
        return row.id


def _clean(value: str | None) -> str:
    return (value or "").replace("\x00", "\ufffd")


def _clip(value: str | None, limit: int) -> str | None:
    return value[:limit] if value else None


def _envelope_fields(body: bytes) -> dict[str, Any]:
    """What can be read of an envelope that failed validation (best effort, for linking on the dashboard)."""
    limits = {"id": 128, "type": 128, "updateid": 64, "project": 64, "area": 64, "source": 256}
    names = {"id": "event_id", "type": "event_type"}
    out: dict[str, Any] = {names.get(k, k): None for k in limits}
    try:
        raw = json.loads(body.decode("utf-8"))
    except (ValueError, RecursionError):  # not UTF-8, not JSON, or nested deeper than the parser recurses
        return out
    if not isinstance(raw, dict):
        return out
    for key, limit in limits.items():
        value = raw.get(key)
        if isinstance(value, str) and value and len(value) <= limit:
            out[names.get(key, key)] = _clean(value)
    return out
