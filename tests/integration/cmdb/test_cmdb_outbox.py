"""The outbox relay against the real broker: confirmed, in order, exactly once, and patient while it is down."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence

import pytest
from sqlalchemy import select, update

from bus.publisher import AsyncPublisher
from producers.cmdb import service
from producers.cmdb.database import CmdbDatabase
from producers.cmdb.models import OutboxMessage
from producers.cmdb.outbox import OutboxRelay, unpublished_count
from producers.cmdb.service import StartUpdate
from tests.busprobe import Probe
from tests.cmdb_support import TcpProxy, free_port, outbox, via_port

pytestmark = [pytest.mark.rabbit]

START = StartUpdate(project="ssss", area="大陆", update_type="hot_server", version="004200000")


@contextlib.asynccontextmanager
async def running(relay: OutboxRelay) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)


def _rows(database: CmdbDatabase) -> Sequence[OutboxMessage]:
    with database.transaction() as session:
        return session.scalars(select(OutboxMessage).order_by(OutboxMessage.id)).all()


async def _settle(_probe: Probe, seconds: float = 1.0) -> None:
    """Give a duplicate, if there were one, time to arrive."""
    await asyncio.sleep(seconds)


async def test_relay_publishes_queued_events_in_order_with_confirms(amqp_url, database, config):
    ids = [service.start_update(database, config, START, requested_by="alice") for _ in range(5)]
    queued = outbox(database)
    async with Probe(amqp_url) as probe, AsyncPublisher(amqp_url) as publisher:
        await probe.bind("ssss.cn.pull.requested.*")
        relay = OutboxRelay(database, publisher)
        async with running(relay):
            got = await probe.wait_for(5)
            await _settle(probe)
    assert [m.message_id for m in got] == [e.id for e in queued]
    assert [m.body for m in got] == [e.to_bytes() for e in queued]
    assert [m.routing_key for m in got] == ["ssss.cn.pull.requested.v1"] * 5
    assert {e.updateid for e in queued} == set(ids)
    assert len(probe.messages) == 5
    assert all(r.published_at is not None for r in _rows(database))
    assert unpublished_count(database) == 0


async def test_relay_wakes_up_for_a_new_row_without_waiting_for_its_poll(amqp_url, database, config):
    async with Probe(amqp_url) as probe, AsyncPublisher(amqp_url) as publisher:
        await probe.bind("#")
        relay = OutboxRelay(database, publisher, poll_seconds=30)
        database.after_outbox_commit.append(relay.wake)
        async with running(relay):
            await asyncio.sleep(0.3)  # the relay is now asleep for 30 s unless woken
            await asyncio.to_thread(service.start_update, database, config, START, "alice")
            await probe.wait_for(1, timeout=5)


async def test_request_accepted_while_the_broker_is_down_is_published_once_it_is_back(amqp_url, database, config):
    port = free_port()
    proxy = TcpProxy(amqp_url, port)  # not started yet: the broker's port refuses connections
    publisher = AsyncPublisher(via_port(amqp_url, port), retry_seconds=0.3)
    relay = OutboxRelay(database, publisher, max_backoff_seconds=0.5)
    async with Probe(amqp_url) as probe:
        await probe.bind("#")
        try:
            async with running(relay):
                update_id = await asyncio.to_thread(service.start_update, database, config, START, "alice")
                await asyncio.sleep(2.0)
                assert probe.messages == []
                [waiting] = _rows(database)
                assert waiting.published_at is None
                assert waiting.attempts >= 1 and waiting.last_error
                await proxy.start()  # the broker is back
                [got] = await probe.wait_for(1, timeout=15)
                await _settle(probe, 1.5)
        finally:
            await publisher.close()
            await proxy.stop()
    assert len(probe.messages) == 1
    assert got.message_id == outbox(database)[0].id
    assert outbox(database)[0].updateid == update_id
    assert unpublished_count(database) == 0


async def test_relay_carries_on_after_the_broker_connection_drops(amqp_url, database, config):
    port = free_port()
    proxy = TcpProxy(amqp_url, port)
    await proxy.start()
    publisher = AsyncPublisher(via_port(amqp_url, port), retry_seconds=0.3)
    relay = OutboxRelay(database, publisher, max_backoff_seconds=0.5)
    async with Probe(amqp_url) as probe:
        await probe.bind("#")
        try:
            async with running(relay):
                await asyncio.to_thread(service.start_update, database, config, START, "alice")
                await probe.wait_for(1)
                await proxy.stop()  # the connection is cut, and new ones are refused
                await asyncio.to_thread(service.start_update, database, config, START, "bob")
                await asyncio.sleep(1.5)
                assert len(probe.messages) == 1
                await proxy.start()
                await probe.wait_for(2, timeout=20)
                await _settle(probe, 1.5)
        finally:
            await publisher.close()
            await proxy.stop()
    assert [m.message_id for m in probe.messages] == [e.id for e in outbox(database)]
    assert unpublished_count(database) == 0


async def test_an_event_published_again_after_a_crash_keeps_its_id(amqp_url, database, config):
    """A crash between the confirm and the mark re-publishes the row; the same message id lets consumers dedupe."""
    service.start_update(database, config, START, requested_by="alice")
    async with Probe(amqp_url) as probe, AsyncPublisher(amqp_url) as publisher:
        await probe.bind("#")
        relay = OutboxRelay(database, publisher)
        assert await relay.publish_pending() == 1
        with database.transaction() as session:  # as if the process died before marking the row
            session.execute(update(OutboxMessage).values(published_at=None))
        assert await relay.publish_pending() == 1
        first, second = await probe.wait_for(2)
    assert first.message_id == second.message_id == outbox(database)[0].id
    assert first.body == second.body


async def test_an_unconfirmed_event_stays_unpublished(database, config):
    class Refusing:
        async def publish(self, envelope):
            raise RuntimeError("broker said no")

    service.start_update(database, config, START, requested_by="alice")
    relay = OutboxRelay(database, Refusing())
    with pytest.raises(RuntimeError):
        await relay.publish_pending()
    [row] = _rows(database)
    assert row.published_at is None
    assert row.attempts == 1 and "broker said no" in (row.last_error or "")
