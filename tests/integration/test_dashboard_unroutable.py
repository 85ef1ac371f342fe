"""The dashboard's header counts the events waiting in the broker's unroutable queue."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from bus.contract.examples import EXAMPLES
from bus.contract.registry import make_envelope
from bus.publisher import SyncPublisher
from bus.topology import Topology, declare_all
from bus.unroutable import UnroutableGauge
from domain.db import upgrade
from projections.dashboard import create_app
from tests.projection_support import DASHBOARD_AUTH, dashboard_access

pytestmark = [pytest.mark.rabbit]


async def test_the_header_shows_how_many_events_are_unroutable(amqp_url, sqlite_url):
    upgrade(sqlite_url, "projection")
    await declare_all(amqp_url, Topology())
    with SyncPublisher(amqp_url) as publisher:
        for n in range(3):
            publisher.publish(make_envelope(EXAMPLES[0], source="tools/x", updateid=f"u-{n}", project="ssss",
                                            area="cn"))
    app = create_app(sqlite_url, access=dashboard_access(), unroutable=UnroutableGauge(amqp_url))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://dash",
                                 headers=DASHBOARD_AUTH) as client:
        page = await client.get("/")
    assert page.status_code == 200
    assert 'id="unroutable-count" class="badge alert">3<' in page.text


async def test_an_unreachable_broker_shows_an_unknown_count_not_an_error(sqlite_url):
    upgrade(sqlite_url, "projection")
    gauge = UnroutableGauge("amqp://guest:guest@127.0.0.1:1/")  # nothing listens on port 1
    app = create_app(sqlite_url, access=dashboard_access(), unroutable=gauge)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://dash",
                                 headers=DASHBOARD_AUTH) as client:
        page = await asyncio.wait_for(client.get("/"), 60)
    assert page.status_code == 200
    assert 'id="unroutable-count" class="badge alert">?<' in page.text
