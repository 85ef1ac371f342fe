"""The notifier's deliveries table on SQLite and PostgreSQL: one per (event, webhook), attempts kept in order."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from consumers.notifier.dispatcher import Dispatcher
from consumers.notifier.store import AttemptRecord, DeliveryStore, NewDelivery
from consumers.notifier.webhooks import WebhookBook, webhook_key

URL = "https://hooks.example.com/" + "x" * 1500  # long URLs are keyed by their hash


def new(event_id: str, url: str = URL) -> NewDelivery:
    return NewDelivery(event_id=event_id, event_type="hotupdate.update.completed.v1", webhook_key=webhook_key(url),
                       webhook_url=url, kind="completed", project="ssss", area="cn", update_id="u-1",
                       body='{"kind":"completed","summary":"全部完成"}')


def attempt(n: int, outcome: str, code: int | None) -> AttemptRecord:
    return AttemptRecord(n, f"d-{n}", datetime.now(UTC), 12, code, "" if code == 200 else "HTTP 500",
                         outcome)  # type: ignore[arg-type]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request):
    url = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "postgres_url")
    opened = DeliveryStore(url)
    yield opened
    opened.close()


def test_the_same_event_and_webhook_is_recorded_once(store):
    (first,) = store.enqueue([new("ev-1")])
    (again,) = store.enqueue([new("ev-1")])
    other_hook, other_event = store.enqueue([new("ev-1", URL + "/2"), new("ev-2")])
    assert again.id == first.id and again.status == "pending"
    assert len({first.id, other_hook.id, other_event.id}) == 3
    assert [r.id for r in store.pending()] == [first.id, other_hook.id, other_event.id]
    assert store.get(first.id).body == '{"kind":"completed","summary":"全部完成"}'


def test_attempts_move_a_delivery_to_its_final_state_and_are_listed_in_order(store):
    (record,) = store.enqueue([new("ev-1")])
    later = datetime.now(UTC) + timedelta(seconds=30)
    store.record_attempt(record.id, attempt(1, "retry", 500), status="pending", next_attempt_at=later)
    pending = store.get(record.id)
    assert (pending.status, pending.attempts, pending.last_status_code) == ("pending", 1, 500)
    assert abs((pending.next_attempt_at - later).total_seconds()) < 1e-3 and pending.finished_at is None
    store.record_attempt(record.id, attempt(2, "delivered", 200), status="delivered", next_attempt_at=later)
    done = store.get(record.id)
    assert (done.status, done.attempts, done.last_error) == ("delivered", 2, "")
    assert done.finished_at is not None and store.pending() == []
    assert [(a.attempt, a.outcome, a.status_code) for a in store.attempts(record.id)] == [
        (1, "retry", 500), (2, "delivered", 200),
    ]
    (enqueued_again,) = store.enqueue([new("ev-1")])
    assert enqueued_again.status == "delivered"


def test_listing_filters_by_status_and_update(store):
    a, b = store.enqueue([new("ev-1"), new("ev-2")])
    store.give_up(b.id, "webhook no longer configured for project ssss")
    assert [r.id for r in store.deliveries(statuses=("failed",))] == [b.id]
    assert store.deliveries(statuses=("failed",))[0].last_error.startswith("webhook no longer configured")
    assert [r.id for r in store.deliveries()] == [b.id, a.id]
    assert store.deliveries(update_id="other") == []
    assert len(store.deliveries(limit=1)) == 1


async def test_a_pending_delivery_whose_webhook_was_removed_is_given_up_on_resume(store):
    (record,) = store.enqueue([new("ev-1")])
    dispatcher = Dispatcher(store, WebhookBook([]))
    await dispatcher.start()
    try:
        assert await dispatcher.resume() == 1
        assert await dispatcher.wait_idle(5)
    finally:
        await dispatcher.stop()
    gone = store.get(record.id)
    assert (gone.status, gone.attempts) == ("failed", 0)
    assert gone.last_error == "webhook no longer configured for project ssss"
