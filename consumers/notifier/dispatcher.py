"""Making the calls: one background task per pending delivery, retried with backoff, every attempt recorded.

A delivery's task runs apart from the consumer, so a webhook that is down holds up neither
the queue nor other webhooks for the length of its backoff. The task reads the delivery's
row before each attempt and writes each attempt with the row's new state in one
transaction, so a notifier that stops (or dies) mid-backoff resumes where it was: on start,
:meth:`Dispatcher.resume` schedules every pending delivery again. A crash between a
webhook's 2xx and its record means one more call after the restart: receivers dedupe by
``X-Hotupdate-Event-Id``. Several notifiers may share one state database (PostgreSQL): each
attempt is claimed on the delivery's row first, so one attempt is one call, whoever makes it.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

import httpx

from bus.metrics import WEBHOOK_DELIVERIES
from consumers.notifier.sending import USER_AGENT, backoff_seconds, post_notification
from consumers.notifier.store import AttemptOutcome, AttemptRecord, DeliveryRecord, DeliveryStatus, DeliveryStore
from consumers.notifier.webhooks import Endpoint, WebhookBook, redact_url

log = logging.getLogger(__name__)

# After an unexpected failure (the database, say), a delivery's task waits this long and tries again.
TROUBLE_PAUSE_SECONDS = 5.0
# A claimed attempt is the claimer's for the call's timeout plus this; past it, another notifier may
# make it (the claimer died mid-call: one more call, which receivers dedupe by event id).
CLAIM_MARGIN_SECONDS = 30.0
CLAIM_LOST_PAUSE_SECONDS = 0.2


class Dispatcher:
    """Runs deliveries in the background: at most one task per delivery at any time."""

    def __init__(self, store: DeliveryStore, book: WebhookBook, *, client: httpx.AsyncClient | None = None) -> None:
        self._store = store
        self._book = book
        self._client = client
        self._own_client = client is None
        self._tasks: dict[int, asyncio.Task[None]] = {}

    async def start(self) -> None:
        if self._client is None:
            self._client = httpx.AsyncClient(headers={"User-Agent": USER_AGENT})

    async def resume(self) -> int:
        """Schedule every delivery a previous process left pending; returns how many."""
        pending = await self._store.apending()
        for record in pending:
            self.schedule(record.id)
        if pending:
            log.info("resuming %d pending webhook deliveries", len(pending))
        return len(pending)

    def schedule(self, delivery_id: int) -> None:
        """Make sure a task is working on ``delivery_id`` (a redelivered event finds it already running)."""
        running = self._tasks.get(delivery_id)
        if running is not None and not running.done():
            return
        task = asyncio.create_task(self._deliver(delivery_id), name=f"notifier-delivery-{delivery_id}")
        self._tasks[delivery_id] = task
        task.add_done_callback(lambda t: self._forget(delivery_id, t))

    def _forget(self, delivery_id: int, task: asyncio.Task[None]) -> None:
        if self._tasks.get(delivery_id) is task:
            del self._tasks[delivery_id]

    @property
    def busy(self) -> int:
        """Deliveries with a task working on them now."""
        return len(self._tasks)

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no delivery is in progress; False if some still are after ``timeout``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._tasks:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            await asyncio.wait(set(self._tasks.values()), timeout=remaining)
        return True

    async def stop(self) -> None:
        """Cancel the deliveries in progress (they stay pending, for the next start) and close the client."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
            log.info("stopped with %d webhook deliveries still pending", len(tasks))
        if self._own_client and self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _deliver(self, delivery_id: int) -> None:
        while True:
            try:
                if not await self._attempt_when_due(delivery_id):
                    return
            except asyncio.CancelledError:
                raise
            except Exception:  # the row stays pending: try again shortly rather than lose the notification
                log.exception("delivery %d: unexpected failure; trying again in %.0fs", delivery_id,
                              TROUBLE_PAUSE_SECONDS)
                await asyncio.sleep(TROUBLE_PAUSE_SECONDS)

    async def _attempt_when_due(self, delivery_id: int) -> bool:
        """Wait for the delivery's next attempt and make it; True if another attempt is to follow."""
        record = await self._store.aget(delivery_id)
        if record is None or record.status != "pending":
            return False
        endpoint = self._book.find(record.project, record.webhook_url)
        if endpoint is None:
            reason = f"webhook no longer configured for project {record.project}"
            log.warning("delivery %d to %s given up: %s", delivery_id, redact_url(record.webhook_url), reason)
            await self._store.agive_up(delivery_id, reason)
            return False
        wait = (record.next_attempt_at - datetime.now(UTC)).total_seconds()
        if wait > 0:
            await asyncio.sleep(wait)
        # Several notifiers may share the state database: the one whose claim succeeds makes the call.
        if not await self._store.aclaim(record, lease_seconds=endpoint.config.timeout_seconds + CLAIM_MARGIN_SECONDS):
            await asyncio.sleep(CLAIM_LOST_PAUSE_SECONDS)
            return True  # read the row again: made by the other, or due again later
        return await self._attempt(record, endpoint)

    async def _attempt(self, record: DeliveryRecord, endpoint: Endpoint) -> bool:
        assert self._client is not None, "Dispatcher.start() was not called"
        attempt_no = record.attempts + 1
        attempted_at = datetime.now(UTC)
        result = await post_notification(self._client, endpoint, record.body.encode("utf-8"),
                                         event_id=record.event_id)
        hook = endpoint.config
        outcome: AttemptOutcome = result.outcome
        if outcome == "retry" and attempt_no >= hook.max_attempts:
            outcome = "exhausted"
        status = _status_after(outcome)
        delay = backoff_seconds(attempt_no, hook.backoff_seconds, hook.max_backoff_seconds,
                                result.retry_after_seconds)
        attempt = AttemptRecord(attempt_no, result.delivery_uuid, attempted_at, result.duration_ms,
                                result.status_code, result.error, outcome)
        await self._store.arecord_attempt(record.id, attempt, status=status,
                                          next_attempt_at=datetime.now(UTC) + timedelta(seconds=delay))
        self._log(record, endpoint, attempt, delay)
        WEBHOOK_DELIVERIES.labels(outcome=outcome).inc()  # delivered, retry, rejected or exhausted
        return status == "pending"

    @staticmethod
    def _log(record: DeliveryRecord, endpoint: Endpoint, attempt: AttemptRecord, delay: float) -> None:
        where = "%s notification event=%s update=%s to %s attempt %d/%d"
        args = (record.kind, record.event_id, record.update_id, endpoint.label, attempt.attempt,
                endpoint.config.max_attempts)
        if attempt.outcome == "delivered":
            log.info(where + " delivered (HTTP %s, %d ms)", *args, attempt.status_code, attempt.duration_ms)
        elif attempt.outcome == "retry":
            log.warning(where + " failed: %s; retrying in %.1fs", *args, attempt.error, delay)
        elif attempt.outcome == "exhausted":
            log.warning(where + " failed: %s; no attempts left, giving up", *args, attempt.error)
        else:
            log.warning(where + " refused: %s; not retrying", *args, attempt.error)


def _status_after(outcome: AttemptOutcome) -> DeliveryStatus:
    if outcome == "delivered":
        return "delivered"
    return "pending" if outcome == "retry" else "failed"
