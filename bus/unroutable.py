"""The unroutable queue: events no queue was bound for, kept by the events exchange's alternate exchange.

Why ``mandatory`` does not tell a publisher: the alternate exchange takes every event no binding
matches, so the broker counts it as routed, confirms it and returns nothing. These events are
looked at, and sent again once the bindings they lacked exist, here (``hotupdate unroutable``).

Listing never removes anything (messages are fetched unacked and go back when the channel
closes). Requeue publishes each chosen message to the events exchange again, with its routing key
and properties, and acks it away from the unroutable queue only after the broker confirmed the
copy. A copy that still matches no binding lands in the unroutable queue again (at its tail: moved,
not lost, not doubled); a probe queue bound to the alternate exchange for the run says which did.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pika
import pika.exceptions

from bus.connection import confirmed_channel
from bus.publisher import broker_login
from bus.topology import Topology

REQUEUE_HEADER = "x-hotupdate-requeued-from-unroutable"
# The copy carries the requeuing login as its AMQP user_id (RabbitMQ allows no other), which consumers
# check like any publisher's: requeue with a user allowed to publish those events. The first
# publisher's user_id is recorded here for the record (informational, not trusted).
ORIGINAL_USER_HEADER = "x-hotupdate-original-user-id"


@dataclass(frozen=True)
class UnroutableMessage:
    position: int
    message_id: str | None
    routing_key: str
    event_type: str
    published_at: datetime | None
    body: bytes
    properties: pika.BasicProperties

    def age_seconds(self, now: datetime | None = None) -> float | None:
        if self.published_at is None:
            return None
        return ((now or datetime.now(UTC)) - self.published_at).total_seconds()

    @property
    def body_text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


@dataclass(frozen=True)
class RequeueResult:
    routed: list[UnroutableMessage]
    still_unroutable: list[UnroutableMessage]


def _published_at(props: pika.BasicProperties, body: bytes) -> datetime | None:
    if isinstance(props.timestamp, int):  # the AMQP timestamp: seconds
        return datetime.fromtimestamp(props.timestamp, UTC)
    try:  # an outside tool may set none: the envelope's own time
        raw = json.loads(body)
        return datetime.fromisoformat(str(raw["time"]).upper())
    except (ValueError, KeyError, TypeError):
        return None


def _event_type(props: pika.BasicProperties, body: bytes) -> str:
    headers = props.headers or {}
    for value in (props.type, headers.get("ce-type")):
        if value:
            return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    try:
        return str(json.loads(body).get("type", ""))
    except (ValueError, AttributeError):
        return ""


class UnroutableQueue:
    """The unroutable queue of a broker (vhost), synchronously with pika."""

    def __init__(self, url: str, topology: Topology | None = None) -> None:
        self._url = url
        self._topology = topology or Topology()


    def count(self) -> int:
        with confirmed_channel(self._url) as ch:
            ok = ch.queue_declare(self._topology.unroutable_queue, passive=True)
            return int(ok.method.message_count)

    def _fetch(self, ch: Any, limit: int) -> list[tuple[int, UnroutableMessage]]:
        # No more than were there at the start: requeued copies that come back land at the tail.
        there = int(ch.queue_declare(self._topology.unroutable_queue, passive=True).method.message_count)
        out: list[tuple[int, UnroutableMessage]] = []
        for position in range(1, min(limit, there) + 1):
            method, props, body = ch.basic_get(self._topology.unroutable_queue, auto_ack=False)
            if method is None:
                break
            out.append((method.delivery_tag, UnroutableMessage(
                position=position, message_id=props.message_id, routing_key=method.routing_key,
                event_type=_event_type(props, body), published_at=_published_at(props, body), body=body,
                properties=props,
            )))
        return out

    def peek(self, limit: int = 1000) -> list[UnroutableMessage]:
        with confirmed_channel(self._url) as ch:
            return [m for _, m in self._fetch(ch, limit)]

    def requeue(self, message_ids: set[str] | None, limit: int = 100_000) -> RequeueResult:
        """Publish the chosen (None: all) messages to the events exchange again; each leaves the
        unroutable queue once its copy is confirmed. Says which copies still found no binding."""
        run = str(uuid.uuid4())
        login = broker_login(self._url)
        routed: list[UnroutableMessage] = []
        sent: dict[str, UnroutableMessage] = {}
        with confirmed_channel(self._url) as ch:
            probe = ch.queue_declare("", exclusive=True, auto_delete=True).method.queue
            ch.queue_bind(probe, self._topology.unroutable_exchange)
            for tag, msg in self._fetch(ch, limit):
                if message_ids is not None and msg.message_id not in message_ids:
                    continue
                token = f"{run}/{msg.position}"
                props = msg.properties
                headers = {**(props.headers or {}), REQUEUE_HEADER: token}
                if props.user_id:
                    headers[ORIGINAL_USER_HEADER] = props.user_id
                ch.basic_publish(
                    self._topology.events_exchange, msg.routing_key, msg.body,
                    pika.BasicProperties(
                        delivery_mode=2, message_id=props.message_id, content_type=props.content_type,
                        content_encoding=props.content_encoding, type=props.type, timestamp=props.timestamp,
                        correlation_id=props.correlation_id, headers=headers, user_id=login,
                    ),
                    mandatory=True,
                )  # returns once confirmed; raises (and acks nothing more) if refused
                ch.basic_ack(tag)
                sent[token] = msg
            back: set[str] = set()
            while True:
                method, props, _body = ch.basic_get(probe, auto_ack=True)
                if method is None:
                    break
                value = (props.headers or {}).get(REQUEUE_HEADER)
                back.add(value.decode() if isinstance(value, bytes) else str(value))
        for token, msg in sent.items():
            if token not in back:
                routed.append(msg)
        return RequeueResult(routed=routed, still_unroutable=[m for t, m in sent.items() if t in back])


class UnroutableGauge:
    """How many events wait in the unroutable queue, asked of the broker at most every ``max_age`` seconds.

    For a page header: a broker that cannot be reached gives None (shown as unknown), never an error.
    """

    def __init__(self, url: str, topology: Topology | None = None, *, max_age: float = 15.0) -> None:
        self._queue = UnroutableQueue(url, topology)
        self._max_age = max_age
        self._lock = threading.Lock()
        self._value: int | None = None
        self._at = float("-inf")

    def __call__(self) -> int | None:
        with self._lock:
            if time.monotonic() - self._at < self._max_age:
                return self._value
            self._at = time.monotonic()  # one asker refreshes; the others get the last value
        try:
            value: int | None = self._queue.count()
        except (pika.exceptions.AMQPError, OSError):
            value = None
        with self._lock:
            self._value = value
        return value
