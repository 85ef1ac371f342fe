"""A copy of every event in a RabbitMQ stream, for AMQP clients that read history from a point.

The projection's SQL event log is the audit record (gapless positions, a hash chain,
``hotupdate log verify``). The stream ``<namespace>.history`` (``x-queue-type: stream``, bound
``#`` on the events exchange) is a convenience beside it: a team's tool can attach with any
AMQP 0-9-1 client and read from the first event kept, from an offset, or from a point in time,
without a database account. Reading is non-destructive; the broker drops the oldest segments
after :data:`MAX_AGE` (a stream has no other bound: set it here, not per client, because every
declaration must carry the same arguments).

The stream captures what is published after it is declared (``hotupdate projection run
--history-stream`` declares it at start-up); it never holds what the SQL log got before.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractQueue

from bus.connection import connect
from bus.contract.envelope import Envelope, EnvelopeError
from bus.topology import Topology, declare_exchanges

MAX_AGE = "90D"
"""How long the broker keeps history (RabbitMQ's ``x-max-age``); the SQL log keeps everything."""

STREAM_ARGUMENTS: dict[str, Any] = {"x-queue-type": "stream", "x-max-age": MAX_AGE}

Start = str | int | datetime
"""Where to attach: ``"first"``, ``"last"`` (the last chunk), ``"next"``, an offset (int), an
aware datetime (the broker's arrival time, to the second), or an interval such as ``"1h"``."""


def history_queue(topology: Topology) -> str:
    return f"{topology.namespace}.history"


async def declare_history(channel: AbstractChannel, topology: Topology) -> AbstractQueue:
    """Declare the events exchange (as every service does) and the history stream bound ``#`` to it."""
    exchange = await declare_exchanges(channel, topology)
    queue = await channel.declare_queue(history_queue(topology), durable=True, arguments=STREAM_ARGUMENTS)
    await queue.bind(exchange, routing_key="#")
    return queue


async def ensure_history(amqp_url: str, topology: Topology) -> None:
    """:func:`declare_history` on a connection of its own (idempotent)."""
    connection = await connect(amqp_url)
    try:
        await declare_history(await connection.channel(), topology)
    finally:
        await connection.close()


@dataclass(frozen=True)
class HistoryEntry:
    offset: int
    envelope: Envelope | None  # None: the body is not an envelope (published around the catalogue)
    body: bytes


async def read_history(amqp_url: str, topology: Topology, *, start: Start = "first", limit: int | None = None,
                       idle_seconds: float = 2.0) -> AsyncIterator[HistoryEntry]:
    """The stream's entries from ``start`` on, oldest first; ends after ``limit`` entries or once
    nothing arrived for ``idle_seconds`` (a stream never ends by itself)."""
    connection = await connect(amqp_url)
    try:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=200)  # the broker requires a prefetch for stream consumers
        queue = await channel.get_queue(history_queue(topology), ensure=True)
        entries: asyncio.Queue[HistoryEntry] = asyncio.Queue()

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            try:
                envelope: Envelope | None = Envelope.from_bytes(message.body)
            except EnvelopeError:
                envelope = None
            offset = (message.headers or {}).get("x-stream-offset")
            await entries.put(HistoryEntry(int(offset) if isinstance(offset, int) else -1, envelope, message.body))
            await message.ack()

        tag = await queue.consume(on_message, arguments={"x-stream-offset": start})
        try:
            count = 0
            while limit is None or count < limit:
                try:
                    entry = await asyncio.wait_for(entries.get(), idle_seconds)
                except TimeoutError:
                    return
                count += 1
                yield entry
        finally:
            with contextlib.suppress(Exception):
                await queue.cancel(tag)
    finally:
        await connection.close()


__all__ = ["MAX_AGE", "HistoryEntry", "declare_history", "ensure_history", "history_queue", "read_history"]
