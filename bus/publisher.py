"""Publishing envelopes: async (aio-pika) for services, sync (pika) for CLIs and other teams' tools.

Both publish persistent messages with publisher confirms and ``mandatory``; a return is
raised as :class:`PublishError`, so a caller never believes an unconfirmed event was
published. What ``mandatory`` can tell here: the events exchange has an alternate
exchange, which takes every event no binding matches, so such an event is confirmed, not
returned, and waits in the unroutable queue (``hotupdate unroutable``, bus/unroutable.py). A
return on the events exchange means the alternate exchange routes nowhere either (its queue
is gone); on a send straight to a queue (retry tiers, parking) it means that queue is missing.

Both reconnect after the broker drops the connection, and retry a nacked publish (a
cluster's queue electing a new leader), until ``retry_seconds`` have passed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any
from urllib.parse import unquote, urlsplit

import aio_pika
import pamqp.commands
import pika
import pika.exceptions
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractRobustConnection
from aiormq.exceptions import AMQPChannelError, AMQPConnectionError, ChannelInvalidStateError, DeliveryError

from bus.connection import connect_blocking, connect_robust
from bus.contract.envelope import Envelope
from bus.contract.events import Event
from bus.handling import child_envelope
from bus.topology import UNROUTABLE_ARGUMENTS, Topology, declare_exchanges
from domain.broker_address import split_broker_urls

log = logging.getLogger(__name__)

REPLAYED_HEADER = "x-hotupdate-replayed"
# Both client libraries log in as guest when the URL names no user.
DEFAULT_LOGIN = "guest"


def broker_login(url: str) -> str:
    """The user ``url`` logs in as: the ``user_id`` every publish through it carries (RabbitMQ checks it)."""
    # Every node of an address list is reached as the same user: the first URL names it.
    username = urlsplit(split_broker_urls(url)[0]).username
    return unquote(username) if username else DEFAULT_LOGIN


class PublishError(RuntimeError):
    """The broker did not confirm the event (nack, returned as unroutable, refused, or unreachable)."""


def message_properties(envelope: Envelope, headers: dict[str, Any] | None = None, *, user_id: str) -> dict[str, Any]:
    """AMQP properties shared by both publishers: the event id is the message id; ``user_id`` the login,
    which the broker verifies (consumers trust nothing else about who published)."""
    return {
        "message_id": envelope.id,
        "user_id": user_id,
        "content_type": "application/cloudevents+json",
        "content_encoding": "utf-8",
        "type": envelope.type,
        "timestamp": envelope.time,
        "correlation_id": envelope.correlationid,
        "headers": {"ce-type": envelope.type, "ce-source": envelope.source, **(headers or {})},
    }


def _nacked(exc: DeliveryError) -> bool:
    """A basic.nack (retried), not a basic.return (unroutable: final)."""
    return isinstance(exc.frame, pamqp.commands.Basic.Nack)


class AsyncPublisher:
    """Confirmed publishing from an asyncio service over a robust (self-reconnecting) connection."""

    def __init__(
        self, url: str, topology: Topology | None = None, *, retry_seconds: float = 30.0, declare: bool = True
    ) -> None:
        self._declare = declare
        self._url = url
        self.login = broker_login(url)
        self._topology = topology or Topology()
        self._retry_seconds = retry_seconds
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None
        # Handlers publish concurrently and a nack reconnects: one of them connects, the others wait.
        self._connecting = asyncio.Lock()

    async def connect(self) -> None:
        async with self._connecting:
            if self._connection is not None:
                return
            connection = await connect_robust(self._url)
            try:
                channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
                if self._declare:
                    exchange = await declare_exchanges(channel, self._topology)
                else:  # a team's user may only write: the exchanges must already exist
                    exchange = await channel.get_exchange(self._topology.events_exchange, ensure=False)
            except BaseException:
                await connection.close()
                raise
            self._connection, self._channel, self._exchange = connection, channel, exchange

    async def publish(self, envelope: Envelope, *, headers: dict[str, Any] | None = None) -> Envelope:
        """Publish to the events exchange and wait for the broker's confirm, retrying through reconnects."""
        message = aio_pika.Message(
            envelope.to_bytes(),
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            **message_properties(envelope, headers, user_id=self.login),
        )
        await self._send(message, envelope.routing_key, to_queue=False, what=f"{envelope.type} {envelope.id}")
        return envelope

    async def send_to_queue(self, message: aio_pika.Message, queue: str) -> None:
        """Put a message straight into a named queue (retry tiers, parking), confirmed, as this login."""
        message.user_id = self.login
        await self._send(message, queue, to_queue=True, what=f"message {message.message_id} to {queue}")

    async def _send(self, message: aio_pika.Message, routing_key: str, *, to_queue: bool, what: str) -> None:
        deadline = time.monotonic() + self._retry_seconds
        delay = 0.2
        while True:
            try:
                await self.connect()
                channel, events = self._channel, self._exchange
                if channel is None or events is None:  # closed by a concurrent nack meanwhile
                    raise ConnectionError("the publisher's connection is being replaced")
                exchange = channel.default_exchange if to_queue else events
                await exchange.publish(message, routing_key=routing_key, mandatory=True, timeout=30)
                return
            except DeliveryError as exc:
                if not _nacked(exc) or time.monotonic() >= deadline:
                    raise PublishError(f"broker refused {what}: {exc}") from exc
                # A nack is the broker's "not taken, try again": in a cluster, a quorum queue whose
                # leader's node was lost nacks until a new leader is elected, and (RabbitMQ 3.10) a
                # channel that published to the old leader keeps nacking after that: a new connection
                # and channel publish to the new leader.
                log.warning("broker nacked %s; reconnecting and retrying in %.1fs", what, delay)
                await self.close()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            except AMQPChannelError as exc:
                # e.g. ACCESS_REFUSED for a routing key this user may not publish: final;
                # the robust channel reopens by itself for the next publish
                raise PublishError(f"broker refused {what}: {exc}") from exc
            except (TimeoutError, AMQPConnectionError, ChannelInvalidStateError, ConnectionError) as exc:
                if time.monotonic() >= deadline:
                    raise PublishError(f"could not publish {what}: broker unreachable: {exc!r}") from exc
                log.warning("publish of %s failed (%r); retrying in %.1fs", what, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def close(self) -> None:
        connection, self._connection, self._channel, self._exchange = self._connection, None, None, None
        if connection is not None:
            await connection.close()

    async def __aenter__(self) -> AsyncPublisher:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class SyncPublisher:
    """Confirmed publishing for synchronous code (the CLI, other teams' tools); not thread-safe."""

    def __init__(
        self, url: str, topology: Topology | None = None, *, retry_seconds: float = 30.0, declare: bool = True
    ) -> None:
        self._declare = declare
        self._url = url
        self.login = broker_login(url)
        self._topology = topology or Topology()
        self._retry_seconds = retry_seconds
        self._connection: pika.BlockingConnection | None = None
        self._channel: Any = None

    def _connect(self) -> None:
        self._connection = connect_blocking(self._url)
        channel = self._connection.channel()
        channel.confirm_delivery()
        self._channel = channel
        if not self._declare:  # a team's user may only write: the exchanges must already exist
            return
        try:  # existing exchanges are only looked up: a passive declare needs no configure permission
            for name in (self._topology.unroutable_exchange, self._topology.dead_letter_exchange,
                         self._topology.events_exchange):
                channel.exchange_declare(name, passive=True)
            return
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code != 404:
                raise
        channel = self._connection.channel()
        channel.confirm_delivery()
        self._channel = channel
        # Declaring is idempotent and makes a first publish on a fresh broker land in
        # the right exchange instead of failing with NOT_FOUND.
        channel.exchange_declare(self._topology.unroutable_exchange, "fanout", durable=True)
        channel.queue_declare(self._topology.unroutable_queue, durable=True, arguments=UNROUTABLE_ARGUMENTS)
        channel.queue_bind(self._topology.unroutable_queue, self._topology.unroutable_exchange)
        channel.exchange_declare(self._topology.dead_letter_exchange, "direct", durable=True)
        channel.exchange_declare(
            self._topology.events_exchange,
            "topic",
            durable=True,
            arguments={"alternate-exchange": self._topology.unroutable_exchange},
        )
        self._channel = channel

    def publish(self, envelope: Envelope, *, headers: dict[str, Any] | None = None) -> Envelope:
        """Publish and block until confirmed; raise :class:`PublishError` if refused or unreachable."""
        props = message_properties(envelope, headers, user_id=self.login)
        props["timestamp"] = int(envelope.time.timestamp())
        properties = pika.BasicProperties(delivery_mode=2, **props)
        deadline = time.monotonic() + self._retry_seconds
        delay = 0.2
        while True:
            try:
                if self._channel is None or not self._channel.is_open:
                    self._connect()
                self._channel.basic_publish(
                    self._topology.events_exchange,
                    envelope.routing_key,
                    envelope.to_bytes(),
                    properties,
                    mandatory=True,
                )
                return envelope
            except pika.exceptions.UnroutableError as exc:
                # not "no binding" (the alternate exchange takes those): the unroutable queue is gone too
                raise PublishError(
                    f"{envelope.id} was returned as unroutable: neither a binding nor the alternate exchange "
                    f"{self._topology.unroutable_exchange} routed it (run 'hotupdate topology declare')"
                ) from exc
            except pika.exceptions.NackError as exc:
                if time.monotonic() >= deadline:  # else retried on a new channel, as AsyncPublisher does
                    raise PublishError(f"broker nacked {envelope.id}") from exc
                log.warning("broker nacked %s; reconnecting and retrying in %.1fs", envelope.id, delay)
                self.close()
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
            except pika.exceptions.ChannelClosedByBroker as exc:
                # e.g. ACCESS_REFUSED for a routing key the user may not publish: final
                self._channel = None
                raise PublishError(f"broker refused {envelope.id}: {exc.reply_code} {exc.reply_text}") from exc
            except pika.exceptions.ProbableAuthenticationError as exc:
                raise PublishError(f"broker refused the credentials: {exc}") from exc
            except (pika.exceptions.AMQPConnectionError, pika.exceptions.AMQPChannelError, OSError) as exc:
                self._channel = None
                if time.monotonic() >= deadline:
                    raise PublishError(f"could not publish {envelope.id}: broker unreachable: {exc!r}") from exc
                log.warning("publish of %s failed (%r); retrying in %.1fs", envelope.id, exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def close(self) -> None:
        if self._connection is not None and self._connection.is_open:
            self._connection.close()
        self._connection = None
        self._channel = None

    def __enter__(self) -> SyncPublisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ChildEmitter:
    """Publishes events caused by ``parent`` (a handler's :class:`bus.handling.Emitter`, or an update the ops
    executor resumes without its request's delivery); offsets number them in the order they are emitted."""

    def __init__(self, parent: Envelope, source: str, publisher: AsyncPublisher, id_key: bytes | None = None) -> None:
        self._parent = parent
        self._source = source
        self._publisher = publisher
        self._id_key = id_key
        self._offset = 0
        self.emitted: list[Envelope] = []

    async def emit(self, event: Event, *, key: str = "", subject: str | None = None) -> Envelope:
        self._offset += 1
        env = child_envelope(
            self._parent, event, source=self._source, offset=self._offset, key=key, subject=subject,
            id_key=self._id_key,
        )
        await self._publisher.publish(env)
        self.emitted.append(env)
        return env
