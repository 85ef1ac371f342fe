"""The CMDB's /metrics and /readyz (its /healthz is in api.py), and its request spans.

``/readyz``: the database answers and the process-manager consumer is consuming. ``/metrics``
(loopback, or the token of ``telemetry.metrics_token_sha256``): the outbox's depth and oldest age, and the depth and
consumers of every configured service's queue (passive declares on the consumer's connection),
read at scrape time; the CMDB is the one process that sees them all, so "an ops manager is
silent" is an alert on its ``hotupdate_queue_consumers``.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

from fastapi import FastAPI
from sqlalchemy import func, select

from bus.consumer import ConsumerService
from bus.health_routes import add_routes, answers
from bus.metrics import OUTBOX_OLDEST_AGE, OUTBOX_PENDING
from bus.queue_stats import publish_gauges, queue_stats
from bus.topology import Topology
from bus.tracing import TracingMiddleware
from domain.config import HotupdateConfig
from domain.services import configured_services
from producers.cmdb.database import CmdbDatabase
from producers.cmdb.models import OutboxMessage

log = logging.getLogger(__name__)


def outbox_stats(database: CmdbDatabase) -> tuple[int, float]:
    """(unpublished rows, age in seconds of the oldest of them; 0 when none)."""
    with database.transaction() as session:
        count, oldest = session.execute(
            select(func.count(), func.min(OutboxMessage.created_at)).where(OutboxMessage.published_at.is_(None))
        ).one()
    if not count or oldest is None:
        return 0, 0.0
    if oldest.tzinfo is None:  # SQLite gives naive datetimes back; they were written in UTC
        oldest = oldest.replace(tzinfo=UTC)
    return int(count), max(0.0, (datetime.now(UTC) - oldest).total_seconds())


def install(app: FastAPI, config: HotupdateConfig, database: CmdbDatabase, consumer: ConsumerService,
            topology: Topology) -> None:
    """Add /readyz and /metrics to the CMDB's app, and a server span around each request when tracing."""
    app.add_middleware(TracingMiddleware)
    token_sha256 = config.telemetry.metrics_token_sha256
    queues = [topology.queue(entry.service) for entry in configured_services(config)]

    async def check() -> dict[str, bool]:
        return {"consumer": consumer.ready,
                "database": await answers("the database", "cmdb", lambda: outbox_stats(database))}

    async def refresh() -> None:
        try:
            pending, age = await asyncio.to_thread(outbox_stats, database)
            OUTBOX_PENDING.set(pending)
            OUTBOX_OLDEST_AGE.set(age)
        except Exception as exc:  # the database is away: the outbox gauges keep their last values
            log.warning("cmdb metrics: outbox unavailable: %r", exc)
        connection = consumer.connection
        if connection is not None and connection.connected.is_set():
            try:
                publish_gauges(await asyncio.wait_for(queue_stats(connection, queues), timeout=3))
            except Exception as exc:  # the broker is away: the queue gauges keep their last values
                log.debug("cmdb metrics: queue depths unavailable: %r", exc)

    add_routes(app, "cmdb", check=check, refresh=refresh, metrics_token_sha256=token_sha256)
