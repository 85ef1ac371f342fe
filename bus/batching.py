"""A batch consumer's machinery: deliveries gathered into batches, and acked together where that is safe.

:class:`Gatherer` hands what arrives to the batch handler in batches of at most ``max_batch`` (after a
short linger, so a prefetched burst goes in one), up to ``depth`` batches at once; a batch waits while
another is handled, growing, since a bigger batch is cheaper per event. :class:`AckLedger` remembers the
delivery tags not yet settled per channel, so one ``ack(multiple=True)`` acks a batch only when it
covers no delivery that is still in a handler, a retry or a park.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass

from aio_pika.abc import AbstractIncomingMessage

from bus.contract.events import Event
from bus.handling import Incoming

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Delivery:
    """A delivery waiting for its batch: the message (to settle) and the event as the handler gets it."""

    message: AbstractIncomingMessage
    incoming: Incoming[Event]
    attempt: int


class Gatherer:
    """Gathers deliveries and hands them to ``handle`` in batches (see the module docstring)."""

    def __init__(self, handle: Callable[[list[Delivery]], Coroutine[object, object, None]], *, name: str,
                 max_batch: int, linger_seconds: float, depth: int) -> None:
        self._handle = handle
        self._name = name
        self._max_batch = max(1, max_batch)
        self._linger = linger_seconds
        self._depth = max(1, depth)
        self._gathered: list[Delivery] = []
        self._gathering = asyncio.Event()  # something was gathered (or the gatherer is stopping)
        self._full = asyncio.Event()  # a whole batch is gathered
        self._stopping = False  # nothing more will be gathered: the loop ends when it has handed everything over
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start handing batches over, on the running event loop."""
        self._stopping = False
        self._gathering, self._full = asyncio.Event(), asyncio.Event()  # of this start's event loop
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"{self._name}-batches")

    def add(self, delivery: Delivery) -> None:
        self._gathered.append(delivery)
        self._gathering.set()
        if len(self._gathered) >= self._max_batch:
            self._full.set()

    async def stop(self, timeout: float) -> None:
        """Hand over what was gathered, wait (up to ``timeout``) for every batch to be handled, then end."""
        if self._task is None:
            return
        self._stopping = True
        self._gathering.set()
        self._full.set()
        await asyncio.wait({self._task}, timeout=timeout)
        self._task = None

    async def _run(self) -> None:
        slots = asyncio.Semaphore(self._depth)
        running: set[asyncio.Task[None]] = set()
        while True:
            await slots.acquire()  # while every slot is busy, what arrives makes the next batch bigger
            await self._gathering.wait()
            if running and not self._stopping and len(self._gathered) < self._max_batch:
                # Another batch is being handled: hand this one over when it is full or when that one is
                # done, not before: the handler would only queue it, and a bigger batch is cheaper per event.
                full = asyncio.get_running_loop().create_task(self._full.wait())
                await asyncio.wait({full, *running}, return_when=asyncio.FIRST_COMPLETED)
                full.cancel()
            elif self._linger > 0 and not self._stopping and len(self._gathered) < self._max_batch:
                await asyncio.sleep(self._linger)  # let the rest of a prefetched burst arrive
            batch, self._gathered = self._gathered[:self._max_batch], self._gathered[self._max_batch:]
            if len(self._gathered) < self._max_batch:
                self._full.clear()
            if not self._gathered and not self._stopping:
                self._gathering.clear()
            if not batch:
                slots.release()
                if self._stopping:  # and nothing is left
                    break
                continue
            task = asyncio.get_running_loop().create_task(self._handle(batch))
            running.add(task)
            task.add_done_callback(running.discard)
            task.add_done_callback(lambda _: slots.release())
        if running:
            await asyncio.wait(running)


class AckLedger:
    """The delivery tags not yet acked, nacked or moved, per channel: a multiple ack must cover none of them."""

    def __init__(self) -> None:
        self._unacked: dict[int, set[int]] = {}

    def arrived(self, message: AbstractIncomingMessage) -> None:
        if message.delivery_tag is not None:
            self._unacked.setdefault(channel_key(message), set()).add(message.delivery_tag)

    def settled(self, message: AbstractIncomingMessage) -> None:
        """``message`` was acked, nacked or moved one by one."""
        unacked = self._unacked.get(channel_key(message))
        if unacked is not None:
            unacked.discard(message.delivery_tag or 0)

    async def ack_all(self, messages: list[AbstractIncomingMessage], service: str) -> None:
        """Ack ``messages``: with one multiple ack per channel where that covers nothing else."""
        by_channel: dict[int, list[AbstractIncomingMessage]] = {}
        for message in messages:
            by_channel.setdefault(channel_key(message), []).append(message)
        for channel, group in by_channel.items():
            unacked = self._unacked.get(channel, set())
            tags = {m.delivery_tag for m in group}
            last = max(group, key=lambda m: m.delivery_tag or 0)
            top = last.delivery_tag or 0
            contiguous = all(tag in tags for tag in unacked if tag <= top)
            try:
                if contiguous and len(group) > 1:
                    await last.ack(multiple=True)
                else:
                    for message in group:
                        await message.ack()
            except Exception as exc:  # channel gone: the broker redelivers, and handlers are idempotent
                log.warning("service %s: ack of %d messages failed: %r", service, len(group), exc)
            unacked.difference_update(tags)


def channel_key(message: AbstractIncomingMessage) -> int:
    """Which channel a delivery came on (delivery tags count per channel); -1 once that channel is closed."""
    try:
        return id(message.channel)
    except Exception:  # aio-pika raises for a closed channel: its unacked deliveries go back to the queue
        return -1
