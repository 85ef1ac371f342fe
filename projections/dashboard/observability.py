"""The dashboard's /healthz, /readyz and /metrics: open without signing in, /metrics to loopback or a token.

/healthz and /readyz say only "ok"/"ready" (a load balancer or systemd asks them); /metrics tells
how busy the system is, so it answers loopback callers, or callers presenting
``Authorization: Bearer <token>`` (``telemetry.metrics_token_sha256``). The projection lag is read from the log at
scrape time (the newest logged event's time), so every dashboard worker reports the same.
"""

from __future__ import annotations

import asyncio
import logging

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session

from bus.metrics import READY, exposition, metrics_allowed, projection_wrote
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

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> JSONResponse:
        try:
            await asyncio.wait_for(asyncio.to_thread(_ping, engine), timeout=5)
            ok = True
        except Exception as exc:
            log.warning("dashboard readiness: the projection database does not answer: %r", exc)
            ok = False
        READY.labels(component="dashboard").set(1 if ok else 0)
        return JSONResponse({"status": "ready" if ok else "not ready", "checks": {"database": ok}},
                            status_code=200 if ok else 503)

    @app.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        if not metrics_allowed(request.client.host if request.client else None,
                               request.headers.get("authorization"), metrics_token_sha256):
            return Response("metrics are served to loopback, or with the metrics token\n", status_code=403)
        try:
            newest = await asyncio.to_thread(_newest_event_time, engine)
            if newest is not None:
                projection_wrote(newest)
        except Exception as exc:
            log.warning("dashboard metrics: the projection log is unavailable: %r", exc)
        body, content_type = exposition()
        return Response(body, media_type=content_type)
