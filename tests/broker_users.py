"""Broker users for tests of who said what: created with unique names on a test's vhost, deleted after.

RabbitMQ refuses a publish whose ``user_id`` property is not the connection's login, so a
message published here with ``user_id`` set arrives with a publisher the broker verified.
"""

from __future__ import annotations

import contextlib
import secrets
import subprocess
from collections.abc import Iterator
from urllib.parse import quote, urlsplit, urlunsplit

import aio_pika

from bus.contract.envelope import Envelope
from bus.topology import Topology
from tests.broker import Broker


def url_as(amqp_url: str, user: str, password: str) -> str:
    """``amqp_url`` (its host and vhost) logged in as ``user``."""
    parts = urlsplit(amqp_url)
    host = parts.hostname or "127.0.0.1"
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}:{parts.port or 5672}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


@contextlib.contextmanager
def broker_users(broker: Broker, amqp_url: str, *names: str) -> Iterator[dict[str, str]]:
    """Create ``names`` (full permissions on ``amqp_url``'s vhost); yields name -> URL logged in as it."""
    vhost = urlsplit(amqp_url).path.lstrip("/") or "/"
    made: list[str] = []
    try:
        urls = {}
        for name in names:
            password = secrets.token_hex(12)
            # The password on stdin, not on a command line (visible in ps).
            subprocess.run([*broker.ctl, "add_user", name], input=password, text=True, capture_output=True,
                           check=True, timeout=60)
            made.append(name)
            broker.rabbitmqctl("set_permissions", "-p", vhost, name, ".*", ".*", ".*")
            urls[name] = url_as(amqp_url, name, password)
        yield urls
    finally:
        for name in made:
            with contextlib.suppress(RuntimeError):
                broker.rabbitmqctl("delete_user", name)


async def publish_as(url: str, user: str, envelope: Envelope) -> None:
    """Publish ``envelope`` to the events exchange logged in as ``user``, with ``user_id`` set (verified)."""
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(Topology().events_exchange)
        message = aio_pika.Message(envelope.to_bytes(), user_id=user, message_id=envelope.id,
                                   content_type="application/json", delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
        await exchange.publish(message, routing_key=envelope.routing_key)
    finally:
        await connection.close()
