"""The dashboard's /healthz, /readyz and /metrics: open without signing in, /metrics to loopback or a token.

/healthz and /readyz say only "ok"/"ready" (a load balancer or systemd asks them); /metrics tells
how busy the system is, so it answers loopback callers, or callers presenting
``Authorization: Bearer <token>`` (``telemetry.metrics_token_sha256``). The projection lag is read from the log at
scrape time (the newest logged event's time), so every dashboard worker reports the same.
"""

from __future__ import annotations

import asyncio
import logging

from fastapi import FastAPI
from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session

from bus.health_routes import add_routes, answers
from bus.metrics import projection_wrote
from projections.models import LoggedEvent, as_utc

log = logging.getLogger(__name__)


def _newest_event_time(engine: Engine) -> float | None:
    with Session(engine) as session:
        newest = session.scalar(select(LoggedEvent.event_time).order_by(LoggedEvent.position.desc()).limit(1))
    stamp = as_utc(newest)
    return stamp.timestamp() if stamp is not None else None


def _ping(engine: Engine) -> None:
    with engine.connect() as connection:
        connection.execute(text("SELECT 1"))


def install(app: FastAPI, engine: Engine, *, metrics_token_sha256: str | None) -> None:
    """Add the three routes to the dashboard's ``app`` reading ``engine``."""

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    async def check() -> dict[str, bool]:
        return {"database": await answers("the projection database", "dashboard", lambda: _ping(engine))}

    async def refresh() -> None:
        newest = await asyncio.to_thread(_newest_event_time, engine)
        if newest is not None:
            projection_wrote(newest)

    add_routes(app, "dashboard", check=check, refresh=refresh, metrics_token_sha256=metrics_token_sha256)
