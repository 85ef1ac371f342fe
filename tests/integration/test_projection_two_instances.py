"""Two projection instances on one queue (single active consumer) and one database: one writes at a time,
the other takes over within seconds when it goes, and the log's chain stays whole and gapless."""

from __future__ import annotations

import asyncio
import time

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from bus.publisher import AsyncPublisher
from domain.db import make_engine
from projections import log as event_log
from projections.models import LoggedEvent
from projections.service import build_service, run
from tests.projection_support import hot_client_flow, hot_server_flow

pytestmark = [pytest.mark.rabbit]


async def _instance(amqp_url: str, database_url: str):
    consumer, projection = build_service(amqp_url=amqp_url, database_url=database_url, retry_delays_ms=(100, 200),
                                         single_active_consumer=True, ingest_in_worker=False)
    stop = asyncio.Event()
    task = asyncio.create_task(run(consumer, projection, stop))
    while not consumer.started:
        await asyncio.sleep(0.05)
    return consumer, projection, stop, task


def _logged(projection) -> int:
    with Session(projection.engine) as session:
        return int(session.scalar(select(func.count()).select_from(LoggedEvent)) or 0)


async def test_one_projection_writes_and_the_other_takes_over_with_the_chain_whole(amqp_url, tmp_path):
    database_url = f"sqlite:///{tmp_path / 'projection.db'}"
    first, first_view, first_stop, first_task = await _instance(amqp_url, database_url)
    second, _second_view, second_stop, second_task = await _instance(amqp_url, database_url)
    flow = hot_server_flow()
    later = hot_client_flow()
    try:
        async with AsyncPublisher(amqp_url) as publisher:
            for envelope, _event in flow:
                await publisher.publish(envelope)
            deadline = time.monotonic() + 20
            while _logged(first_view) < len(flow):
                assert time.monotonic() < deadline, "the first instance did not log the flow"
                await asyncio.sleep(0.1)
            assert (first.handled, second.handled) == (len(flow), 0)  # only the active one received

            first_stop.set()  # the writing instance goes away
            await asyncio.wait_for(first_task, 30)
            gone = time.monotonic()
            for envelope, _event in later:
                await publisher.publish(envelope)
            while second.handled < len(later):
                assert time.monotonic() - gone < 10, "the second instance did not take over within seconds"
                await asyncio.sleep(0.1)
    finally:
        first_stop.set()
        second_stop.set()
        await asyncio.gather(first_task, second_task, return_exceptions=True)
    check = make_engine(database_url)
    try:
        with Session(check) as session:
            result = event_log.verify(session)
            positions = list(session.scalars(select(LoggedEvent.position).order_by(LoggedEvent.position)))
    finally:
        check.dispose()
    assert result.ok, result.describe()
    assert positions == list(range(1, len(flow) + len(later) + 1))
