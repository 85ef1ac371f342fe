"""How deep a queue is and who consumes it, from passive declares (no management plugin needed).

A passive declare of a queue that does not exist closes the channel it was made on, so each
queue is asked on a channel of its own; a missing queue is reported as None.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from aio_pika.abc import AbstractConnection

from bus.connection import connect_blocking
from bus.metrics import QUEUE_CONSUMERS, QUEUE_MESSAGES

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class QueueStats:
    name: str
    messages: int
    consumers: int


async def queue_stats(connection: AbstractConnection, names: Iterable[str]) -> dict[str, QueueStats | None]:
    """Each queue's ready messages and consumers (None: the queue does not exist), on ``connection``."""
    found: dict[str, QueueStats | None] = {}
    for name in names:
        channel = await connection.channel()
        try:
            queue = await channel.declare_queue(name, passive=True)
            result = queue.declaration_result
            found[name] = QueueStats(name, int(result.message_count or 0), int(result.consumer_count or 0))
        except Exception as exc:  # NOT_FOUND closes the channel: the queue is not there (yet)
            log.debug("passive declare of %s failed: %r", name, exc)
            found[name] = None
        finally:
            if not channel.is_closed:
                await channel.close()
    return found


def queue_stats_blocking(amqp_url: str, names: Iterable[str]) -> dict[str, QueueStats | None]:
    """As :func:`queue_stats`, for command-line tools (pika, one connection for all the queues)."""
    import pika.exceptions

    found: dict[str, QueueStats | None] = {}
    connection = connect_blocking(amqp_url)
    try:
        for name in names:
            channel = connection.channel()
            try:
                ok = channel.queue_declare(name, passive=True)
                found[name] = QueueStats(name, int(ok.method.message_count), int(ok.method.consumer_count))
                channel.close()
            except pika.exceptions.ChannelClosedByBroker:
                found[name] = None
    finally:
        connection.close()
    return found


def publish_gauges(stats: dict[str, QueueStats | None]) -> None:
    """Show ``stats`` as hotupdate_queue_messages / hotupdate_queue_consumers (a missing queue: left as it was)."""
    for name, stat in stats.items():
        if stat is not None:
            QUEUE_MESSAGES.labels(queue=name).set(stat.messages)
            QUEUE_CONSUMERS.labels(queue=name).set(stat.consumers)
