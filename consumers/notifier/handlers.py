"""The notifier's handlers: one per triggering event type, all the same function.

Every triggering event is handled the same way (its row of :data:`TRIGGERS` says what it
means), so the table maps each row's event type to this module's one function, which reads
its event's row; adding a row there adds a handler here. Handling records the deliveries as pending, hands them to the
dispatcher and returns: the event is acked once its notifications are safely written down,
not once the webhooks have answered.
"""

from __future__ import annotations

import logging

from bus.contract.events import Event
from bus.handling import Emitter, Incoming
from bus.wiring import Handlers
from consumers.notifier.dispatcher import Dispatcher
from consumers.notifier.payload import notification_for
from consumers.notifier.seed_shapes import seed_body
from consumers.notifier.store import DeliveryStore, NewDelivery
from consumers.notifier.triggers import TRIGGERS
from consumers.notifier.webhooks import WebhookBook, webhook_key

log = logging.getLogger(__name__)


async def handle_notifying_event(
    msg: Incoming[Event],
    emit: Emitter,
    *,
    book: WebhookBook,
    store: DeliveryStore,
    dispatcher: Dispatcher,
) -> None:
    """Record one pending delivery per webhook of the project that wants this kind, then start them."""
    env = msg.envelope
    notification = notification_for(env, msg.event, TRIGGERS[type(msg.event)])
    endpoints = [e for e in book.for_project(env.project) if e.wants(notification.kind)]
    if not endpoints:
        log.info("%s id=%s update=%s: no webhook of project %s wants %s", env.type, env.id, env.updateid,
                 env.project, notification.kind)
        return
    bodies = {"notification": notification.body(), "seed": seed_body(env, msg.event)}
    records = await store.aenqueue([
        NewDelivery(event_id=env.id, event_type=env.type, webhook_key=webhook_key(e.url), webhook_url=e.url,
                    kind=notification.kind, project=env.project, area=env.area, update_id=env.updateid,
                    body=body.decode("utf-8"))
        for e in endpoints
        if (body := bodies[e.config.format]) is not None  # the seed had no callback for every event
    ])
    pending = [r for r in records if r.status == "pending"]
    for record in pending:
        dispatcher.schedule(record.id)
    log.info("%s id=%s update=%s: %s notification to %d webhook(s), %d already done",
             env.type, env.id, env.updateid, notification.kind, len(pending), len(records) - len(pending))


HANDLERS: Handlers = {event_type: handle_notifying_event for event_type in TRIGGERS}
"""What the notifier handles; its service binds them (bus/wiring.py)."""
