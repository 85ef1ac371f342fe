"""Looking into, requeueing and purging parking queues (the quarantine), synchronously with pika.

Listing never removes anything: messages are fetched unacked and returned when the
channel closes. Requeue sends a message back to its service's queue (not the exchange,
so other consumers do not see it twice) with its try count reset; purge acks it away,
and only the messages asked for. Both act only after the broker confirmed the copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pika

from bus.connection import confirmed_channel
from bus.publisher import broker_login
from bus.topology import Topology

REASON_HEADER = "x-hotupdate-park-reason"
ATTEMPT_HEADER = "x-hotupdate-attempt"
PUBLISHER_HEADER = "x-hotupdate-publisher"


@dataclass(frozen=True)
class ParkedMessage:
    position: int
    message_id: str | None
    reason: str
    parked_at: str
    routing_key: str
    body: bytes
    headers: dict[str, Any]
    user_id: str = ""  # who put it in the parking queue: the service (or the broker, dead-lettering the original)

    @property
    def body_text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return "" if value is None else str(value)


class ParkingQueues:
    """The parking queues of a broker (vhost), addressed by service name."""

    def __init__(self, url: str, topology: Topology | None = None) -> None:
        self._url = url
        self._topology = topology or Topology()


    def count(self, service: str) -> int:
        with confirmed_channel(self._url) as ch:
            ok = ch.queue_declare(self._topology.parking_queue(service), passive=True)
            return int(ok.method.message_count)

    def _fetch(self, ch: Any, service: str, limit: int) -> list[tuple[int, ParkedMessage]]:
        queue = self._topology.parking_queue(service)
        out: list[tuple[int, ParkedMessage]] = []
        for position in range(1, limit + 1):
            method, props, body = ch.basic_get(queue, auto_ack=False)
            if method is None:
                break
            headers = dict(props.headers or {})
            out.append(
                (
                    method.delivery_tag,
                    ParkedMessage(
                        position=position,
                        message_id=props.message_id,
                        reason=_text(headers.get(REASON_HEADER)),
                        parked_at=_text(headers.get("x-hotupdate-parked-at")),
                        routing_key=_text(headers.get("x-hotupdate-original-routing-key")),
                        body=body,
                        headers=headers,
                        user_id=props.user_id or "",
                    ),
                )
            )
        return out

    def peek(self, service: str, limit: int = 1000) -> list[ParkedMessage]:
        with confirmed_channel(self._url) as ch:
            return [m for _, m in self._fetch(ch, service, limit)]

    def requeue(self, service: str, message_ids: set[str] | None, limit: int = 100_000) -> list[ParkedMessage]:
        """Send the chosen (or, with None, all) parked messages back to the service's queue.

        The copy is published as this connection's login; the service believes what the copy says
        of the original's publisher and routing key only if that login is its own (bus/consumer.py),
        so requeue with the service's own broker URL (HOTUPDATE_AMQP_URL on its machine).
        """
        login = broker_login(self._url)
        done: list[ParkedMessage] = []
        with confirmed_channel(self._url) as ch:
            for tag, msg in self._fetch(ch, service, limit):
                if message_ids is not None and msg.message_id not in message_ids:
                    continue
                headers = {k: v for k, v in msg.headers.items() if not k.startswith("x-hotupdate-park")}
                headers[ATTEMPT_HEADER] = 1
                headers["x-hotupdate-requeued-from-parking"] = msg.reason[:1000]
                if PUBLISHER_HEADER not in headers and msg.user_id:  # dead-lettered by the broker: the original
                    headers[PUBLISHER_HEADER] = msg.user_id
                ch.basic_publish(
                    "",
                    self._topology.queue(service),
                    msg.body,
                    pika.BasicProperties(delivery_mode=2, message_id=msg.message_id, headers=headers, user_id=login),
                    mandatory=True,
                )
                ch.basic_ack(tag)
                done.append(msg)
        return done

    def purge(self, service: str, message_ids: set[str] | None, limit: int = 100_000) -> list[ParkedMessage]:
        """Delete the chosen (or, with None, all) parked messages: the only way anything is deleted."""
        done: list[ParkedMessage] = []
        with confirmed_channel(self._url) as ch:
            for tag, msg in self._fetch(ch, service, limit):
                if message_ids is None or msg.message_id in message_ids:
                    ch.basic_ack(tag)
                    done.append(msg)
        return done
