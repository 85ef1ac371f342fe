"""/readyz and /metrics, one way for every process that serves them.

The consumers' bare listener (:mod:`bus.health`) and the FastAPI apps (the CMDB's, the dashboard's)
answer alike: ``/readyz`` is 200 with ``{"status": "ready", "checks": {...}}`` when every check
passes, else 503 with the same body saying which failed, and it sets the ``hotupdate_ready`` gauge;
``/metrics`` first refreshes what is read at scrape time, then renders the process's metrics. On
the apps, which are otherwise signed in, /metrics answers loopback or the metrics token only.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping

from fastapi import FastAPI, Request, Response

from bus.metrics import READY, exposition, metrics_allowed

log = logging.getLogger(__name__)

Check = Callable[[], Awaitable[Mapping[str, bool]]]
Refresh = Callable[[], Awaitable[None]]


def readiness(component: str, checks: Mapping[str, bool]) -> tuple[int, bytes]:
    """(status code, JSON body) of /readyz for ``checks``; sets the component's ready gauge."""
    ok = all(checks.values())
    READY.labels(component=component).set(1 if ok else 0)
    return (200 if ok else 503), json.dumps({"status": "ready" if ok else "not ready", "checks": dict(checks)}).encode()


async def answers(what: str, component: str, call: Callable[[], object], timeout: float = 5) -> bool:
    """Whether the blocking ``call`` (a database ping) returns within ``timeout``; a failure is logged."""
    try:
        await asyncio.wait_for(asyncio.to_thread(call), timeout=timeout)
        return True
    except Exception as exc:
        log.warning("%s readiness: %s does not answer: %r", component, what, exc)
        return False


def add_routes(app: FastAPI, component: str, *, check: Check, refresh: Refresh,
               metrics_token_sha256: str | None) -> None:
    """Add /readyz and /metrics to ``app`` (its /healthz is its own: it answers while the process runs)."""

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> Response:
        status, body = readiness(component, await check())
        return Response(body, status_code=status, media_type="application/json")

    @app.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        if not metrics_allowed(request.client.host if request.client else None,
                               request.headers.get("authorization"), metrics_token_sha256):
            return Response("metrics are served to loopback, or with the metrics token\n", status_code=403)
        try:
            await refresh()
        except Exception as exc:  # what is read at scrape time keeps its last value
            log.warning("%s metrics: %r", component, exc)
        body, content_type = exposition()
        return Response(body, media_type=content_type)
