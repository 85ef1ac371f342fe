"""The consumer runtime's batch path against a real RabbitMQ: batches, acks, retries, parking, replays, stop."""

from __future__ import annotations

import asyncio

import aio_pika
import pytest

from bus.consumer import ConsumerService, Reject, Rejection
from bus.contract.events import PullRequested
from bus.contract.examples import EXAMPLES
from bus.contract.registry import make_envelope
from bus.publisher import REPLAYED_HEADER, AsyncPublisher
from bus.redelivery import REASON_HEADER
from bus.topology import ServiceQueue, Topology, binding, declare_all
from tests.busprobe import Probe

pytestmark = [pytest.mark.rabbit]
PULL = EXAMPLES[0]
SPEC = ServiceQueue(service="batchsvc", bindings=(binding(PullRequested, project="ssss"),), retry_delays_ms=(100, 100))


def _env(n: int = 0):
    return make_envelope(PULL, source="tests", updateid=f"u-{n}", project="ssss", area="cn", sequence=n)


class BatchRecorder:
    """A batch handler: records the batches; fails (or rejects) the events whose ids it is told to."""

    def __init__(self, failing: set[str] = frozenset(), rejecting: set[str] = frozenset(), delay: float = 0.0):
        self.batches: list[list[str]] = []
        self.failing = failing
        self.rejecting = rejecting
        self.delay = delay
        self.finished: list[str] = []

    async def __call__(self, batch):
        ids = [msg.envelope.id for msg in batch]
        assert all(msg.body for msg in batch)  # the bytes as delivered come along
        self.batches.append(ids)
        if self.delay:
            await asyncio.sleep(self.delay)
        self.finished.extend(ids)
        return [RuntimeError(f"boom {i}") if i in self.failing else Reject("never") if i in self.rejecting else None
                for i in ids]

    @property
    def seen(self) -> list[str]:
        return [i for batch in self.batches for i in batch]


async def _never(msg, emit):  # the per-type table says what is ours; the batch handler gets it all
    raise AssertionError("the single handler is not called on the batch path")


def _service(url, handler, *, on_reject=None, max_batch=100, prefetch=200):
    return ConsumerService(
        amqp_url=url, queue=SPEC, handlers={PullRequested: _never}, source="tests/batchsvc",
        on_reject=on_reject, prefetch=prefetch, batch_handler=handler, max_batch=max_batch,
    )


async def _queue_counts(url: str, name: str) -> tuple[int, int]:
    """(ready messages, consumers) of a queue, as the broker sees it."""
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(name, passive=True)
        result = queue.declaration_result
        return result.message_count or 0, result.consumer_count or 0


async def _until(check, timeout: float = 20.0) -> None:
    for _ in range(int(timeout / 0.05)):
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("not reached in time")


async def test_a_burst_goes_in_batches_and_every_message_is_acked_once(amqp_url):
    await declare_all(amqp_url, Topology(), [SPEC])
    async with AsyncPublisher(amqp_url) as pub:
        sent = [(await pub.publish(_env(n))).id for n in range(120)]
    handler = BatchRecorder()
    service = _service(amqp_url, handler, max_batch=50)
    await service.start()
    try:
        await _until(lambda: service.handled == len(sent))
    finally:
        await service.stop()
    assert sorted(handler.seen) == sorted(sent)  # each once: nothing redelivered
    assert len(handler.batches) < len(sent) and max(len(b) for b in handler.batches) <= 50
    assert service.batches == len(handler.batches)
    # acked for good: after the consumer is gone nothing comes back to the queue
    assert await _queue_counts(amqp_url, Topology().queue("batchsvc")) == (0, 0)


async def test_an_event_failing_in_its_batch_is_retried_then_parked_while_the_rest_are_acked(amqp_url):
    rejections: list[Rejection] = []

    async def on_reject(r: Rejection) -> None:
        rejections.append(r)

    await declare_all(amqp_url, Topology(), [SPEC])
    async with AsyncPublisher(amqp_url) as pub:
        sent = [await pub.publish(_env(n)) for n in range(30)]
    poison = sent[7].id
    handler = BatchRecorder(failing={poison})
    service = _service(amqp_url, handler, on_reject=on_reject)
    await service.start()
    try:
        async with Probe(amqp_url) as probe:
            await probe.watch(Topology().parking_queue("batchsvc"))
            (parked,) = await probe.wait_for(1)
        await _until(lambda: service.handled == len(sent) - 1)
    finally:
        await service.stop()
    assert handler.seen.count(poison) == 3  # first try and the two delay tiers
    assert all(handler.seen.count(e.id) == 1 for e in sent if e.id != poison)
    assert parked.message_id == poison
    assert "handler failed after 3 attempts" in parked.headers[REASON_HEADER]
    assert f"boom {poison}" in parked.headers[REASON_HEADER]
    assert [r.message_id for r in rejections] == [poison]
    assert service.parked == 1
    assert await _queue_counts(amqp_url, Topology().queue("batchsvc")) == (0, 0)


async def test_a_batch_whose_handler_raises_is_retried_whole_and_nothing_is_lost(amqp_url):
    calls = 0

    async def flaky(batch):
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("the transaction failed")
        return [None] * len(batch)

    await declare_all(amqp_url, Topology(), [SPEC])
    async with AsyncPublisher(amqp_url) as pub:
        for n in range(10):
            await pub.publish(_env(n))
    service = _service(amqp_url, flaky)
    await service.start()
    try:
        await _until(lambda: service.handled == 10)
    finally:
        await service.stop()
    assert calls >= 2 and service.parked == 0


async def test_rejected_malformed_and_replayed_messages_are_handled_as_for_single_handlers(amqp_url):
    rejections: list[Rejection] = []

    async def on_reject(r: Rejection) -> None:
        rejections.append(r)

    handler = BatchRecorder(rejecting=set())
    service = _service(amqp_url, handler, on_reject=on_reject)
    await service.start()
    try:
        async with Probe(amqp_url) as probe, AsyncPublisher(amqp_url) as pub:
            await probe.publish_raw(b"{not json", "ssss.cn.pull.requested.v1", message_id="garbage-1")
            replayed = _env(1)
            await probe.publish_raw(replayed.to_bytes(), replayed.routing_key, message_id=replayed.id,
                                    headers={REPLAYED_HEADER: True})
            refused = _env(2)
            handler.rejecting = {refused.id}
            await pub.publish(refused)
            good = await pub.publish(_env(3))
            await probe.watch(Topology().parking_queue("batchsvc"))
            parked = await probe.wait_for(2)
            await _until(lambda: good.id in handler.seen)
    finally:
        await service.stop()
    reasons = {m.message_id: m.headers[REASON_HEADER] for m in parked}
    assert reasons["garbage-1"].startswith("malformed: body is not JSON")
    assert reasons[refused.id] == "rejected by handler: never"
    assert replayed.id not in handler.seen  # a replay is not for this service (accept_replayed=False)
    assert handler.seen.count(refused.id) == 1  # parked at once, no retries
    assert sorted(r.message_id or "" for r in rejections) == sorted(["garbage-1", refused.id])
    assert await _queue_counts(amqp_url, Topology().queue("batchsvc")) == (0, 0)


async def test_stop_lets_the_batch_in_flight_finish_and_be_acked(amqp_url):
    await declare_all(amqp_url, Topology(), [SPEC])
    handler = BatchRecorder(delay=1.0)
    service = _service(amqp_url, handler)
    await service.start()
    async with AsyncPublisher(amqp_url) as pub:
        sent = [(await pub.publish(_env(n))).id for n in range(5)]
    await _until(lambda: len(handler.seen) == len(sent))
    await service.stop()
    assert sorted(handler.finished) == sorted(sent)
    assert service.handled == len(sent)
    assert await _queue_counts(amqp_url, Topology().queue("batchsvc")) == (0, 0)


async def test_the_batch_path_survives_the_broker_closing_its_connections(amqp_url):
    import subprocess
    from urllib.parse import unquote, urlsplit

    handler = BatchRecorder()
    service = _service(amqp_url, handler)
    await service.start()
    try:
        async with AsyncPublisher(amqp_url) as pub:
            before = [(await pub.publish(_env(n))).id for n in range(5)]
            await _until(lambda: service.handled == 5)
            vhost = unquote(urlsplit(amqp_url).path[1:])
            await asyncio.to_thread(
                subprocess.run, ["rabbitmqctl", "close_all_connections", "--vhost", vhost, "test: broker-side close"],
                check=True, capture_output=True, timeout=60)
            after = [(await pub.publish(_env(n))).id for n in range(5, 10)]  # reconnects by itself
            await _until(lambda: set(after) <= set(handler.seen), timeout=30)
    finally:
        await service.stop()
    assert set(before) | set(after) <= set(handler.seen)
    assert await _queue_counts(amqp_url, Topology().queue("batchsvc")) == (0, 0)
