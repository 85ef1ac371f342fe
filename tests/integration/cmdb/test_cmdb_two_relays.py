"""Two CMDB instances on one PostgreSQL database: one outbox relay publishes at a time, every row once and
in write order, and the other takes over within seconds when the first one's database session dies."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator

import pytest
import sqlalchemy as sa

from bus.publisher import AsyncPublisher
from producers.cmdb import service
from producers.cmdb.database import CmdbDatabase
from producers.cmdb.outbox import OutboxRelay, unpublished_count
from producers.cmdb.relay_lease import OUTBOX_RELAY_LOCK
from producers.cmdb.service import StartUpdate
from tests.busprobe import Probe
from tests.cmdb_support import make_config, outbox

pytestmark = [pytest.mark.rabbit, pytest.mark.postgres]

START = StartUpdate(project="ssss", area="大陆", update_type="hot_server", version="004200000")


@contextlib.asynccontextmanager
async def running(*relays: OutboxRelay) -> AsyncIterator[None]:
    """Both relays running on one stop event."""
    stop = asyncio.Event()
    tasks = [asyncio.create_task(r.run(stop)) for r in relays]
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 15)


def _holder_pid(url: str) -> int | None:
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text("SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND objid = :key "
                                        "AND granted"), {"key": OUTBOX_RELAY_LOCK}).scalar()
    finally:
        engine.dispose()


def _terminate(url: str, pid: int) -> None:
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    finally:
        engine.dispose()


async def test_two_relays_on_one_database_publish_each_row_once_in_write_order(amqp_url, postgres_url, tmp_path):
    config = make_config(tmp_path)
    first, second = CmdbDatabase(postgres_url), CmdbDatabase(postgres_url, migrate=False)
    try:
        for i in range(20):  # requests reach either instance
            await asyncio.to_thread(service.start_update, (first, second)[i % 2], config, START, "alice")
        queued = outbox(first)
        async with Probe(amqp_url) as probe, AsyncPublisher(amqp_url) as pub1, AsyncPublisher(amqp_url) as pub2:
            await probe.bind("#")
            relays = OutboxRelay(first, pub1, poll_seconds=0.05), OutboxRelay(second, pub2, poll_seconds=0.05)
            async with running(*relays):
                await probe.wait_for(len(queued))
                await asyncio.sleep(1.0)  # a duplicate, if there were one, would arrive now
        ids = [m.message_id for m in probe.messages]
        assert ids == [e.id for e in queued]  # once each, in the order they were written
        assert sorted(r.published for r in relays) == [0, len(queued)]  # one relay did all of it
        assert unpublished_count(first) == 0
    finally:
        first.close()
        second.close()


async def test_the_other_relay_takes_over_when_the_publishing_one_dies(amqp_url, postgres_url, tmp_path):
    config = make_config(tmp_path)
    first, second = CmdbDatabase(postgres_url), CmdbDatabase(postgres_url, migrate=False)
    try:
        async with Probe(amqp_url) as probe, AsyncPublisher(amqp_url) as pub1, AsyncPublisher(amqp_url) as pub2:
            await probe.bind("#")
            relays = OutboxRelay(first, pub1, poll_seconds=0.1), OutboxRelay(second, pub2, poll_seconds=0.1)
            stops = asyncio.Event(), asyncio.Event()
            tasks = [asyncio.create_task(r.run(s)) for r, s in zip(relays, stops, strict=True)]
            await asyncio.to_thread(service.start_update, first, config, START, "alice")
            await probe.wait_for(1)
            while sum(r.published for r in relays) < 1:  # counted once the row is marked published
                await asyncio.sleep(0.05)
            holder = next(i for i, r in enumerate(relays) if r.published == 1)
            pid = await asyncio.to_thread(_holder_pid, postgres_url)
            assert pid is not None
            # The holder dies: its database session ends (so does its lock), and it does nothing more.
            await asyncio.to_thread(_terminate, postgres_url, pid)
            tasks[holder].cancel()
            await asyncio.gather(tasks[holder], return_exceptions=True)
            started = asyncio.get_running_loop().time()
            await asyncio.to_thread(service.start_update, second, config, START, "bob")
            await probe.wait_for(2, timeout=10)
            took = asyncio.get_running_loop().time() - started
            await asyncio.sleep(0.5)
            stops[1 - holder].set()
            await asyncio.wait_for(tasks[1 - holder], 15)
        assert relays[1 - holder].published == 1
        assert took < 5
        assert Counter(m.message_id for m in probe.messages).most_common(1)[0][1] == 1
        assert unpublished_count(first) == 0
    finally:
        first.close()
        second.close()
