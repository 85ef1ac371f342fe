"""Test-side helpers for looking at a real broker: a probe queue that collects what arrives."""

from __future__ import annotations

import asyncio
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from bus.connection import connect
from bus.topology import Topology, declare_exchanges


class Probe:
    """A temporary queue bound to the events exchange (or reading a named queue) that collects messages."""

    def __init__(self, url: str, topology: Topology | None = None) -> None:
        self.url = url
        self.topology = topology or Topology()
        self.messages: list[AbstractIncomingMessage] = []
        self._connection: Any = None
        self._arrived = asyncio.Condition()

    async def __aenter__(self) -> Probe:
        self._connection = await connect(self.url)
        self.channel = await self._connection.channel()
        self.exchange = await declare_exchanges(self.channel, self.topology)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._connection.close()

    async def bind(self, *patterns: str) -> None:
        queue = await self.channel.declare_queue(exclusive=True, auto_delete=True)
        for pattern in patterns:
            await queue.bind(self.exchange, routing_key=pattern)
        await queue.consume(self._collect, no_ack=True)

    async def watch(self, queue_name: str) -> None:
        """Consume an existing durable queue (parking, unroutable) into this probe."""
        queue = await self.channel.get_queue(queue_name, ensure=True)
        await queue.consume(self._collect, no_ack=True)

    async def _collect(self, message: AbstractIncomingMessage) -> None:
        async with self._arrived:
            self.messages.append(message)
            self._arrived.notify_all()

    async def wait_for(self, count: int, timeout: float = 15.0) -> list[AbstractIncomingMessage]:
        async def enough() -> None:
            async with self._arrived:
                await self._arrived.wait_for(lambda: len(self.messages) >= count)

        try:
            await asyncio.wait_for(enough(), timeout)
        except TimeoutError:
            raise AssertionError(f"expected {count} messages, got {len(self.messages)} in {timeout}s") from None
        return list(self.messages)

    async def publish_raw(self, body: bytes, routing_key: str, **props: Any) -> None:
        await self.exchange.publish(aio_pika.Message(body, **props), routing_key=routing_key)
