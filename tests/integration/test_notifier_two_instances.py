"""Two notifiers sharing one state database (PostgreSQL) and one queue: each attempt of a delivery is one
call, made by whichever notifier claimed it, however both of them resume the pending deliveries."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from consumers.notifier.service import build_service
from consumers.notifier.store import DeliveryStore
from domain.config import NotifierConfig
from tests.integration.test_notifier import FAST, SECRET, completed, config_for, envelope, eventually, publish
from tests.webhook_receiver import WebhookReceiver

pytestmark = [pytest.mark.rabbit, pytest.mark.postgres]


async def test_two_notifiers_make_each_attempt_once(amqp_url, tmp_path, postgres_url):
    with WebhookReceiver(SECRET) as hook:
        hook.always(503)
        base = config_for(amqp_url, tmp_path, {"ssss": [
            {"url": hook.url, **FAST, "backoff_seconds": 0.3, "max_backoff_seconds": 0.3, "max_attempts": 20},
        ]})
        config = base.model_copy(update={"notifier": NotifierConfig(state_url=postgres_url)})
        envelopes = [envelope(completed()) for _ in range(6)]
        first = build_service(config)
        await first.start()
        second = None
        store = DeliveryStore(postgres_url, migrate=False)
        try:
            await publish(amqp_url, *envelopes)
            await eventually(lambda: len(store.deliveries()) == 6 and all(d.attempts >= 1 for d in store.deliveries()))
            second = build_service(config)  # resumes every pending delivery the first one is also working on
            await second.start()
            assert second.resumed == 6
            await asyncio.sleep(1.5)  # several retries, both notifiers wanting each one
            hook.always(200)
            await eventually(lambda: all(d.status == "delivered" for d in store.deliveries()), timeout=30)
            await asyncio.sleep(0.5)  # a second call for an attempt, if there were one, would arrive now
        finally:
            await first.stop()
            if second is not None:
                await second.stop()
        deliveries = store.deliveries()
        numbers = {d.id: [a.attempt for a in store.attempts(d.id)] for d in deliveries}
        calls = list(hook.calls)
        store.close()
    per_event = Counter(c.headers["x-hotupdate-event-id"] for c in calls)
    for delivery in deliveries:
        assert numbers[delivery.id] == list(range(1, delivery.attempts + 1))  # no attempt made twice
        assert per_event[delivery.event_id] == delivery.attempts, "a call was made that is not an attempt"
    assert Counter(c.answered for c in calls)[200] == 6  # delivered once each
    assert sum(d.attempts for d in deliveries) > 12  # both were retrying while both ran
