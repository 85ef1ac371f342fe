"""The projection consumer on the real broker: published events show up in the dashboard's JSON API."""

from __future__ import annotations

import asyncio
import json
import random
import time
from typing import Any

import aio_pika
import httpx
import pytest
from sqlalchemy.orm import Session

from bus.contract.envelope import Envelope
from bus.contract.events import BatchFinishedV1, Event, UpdateRequested, UpdateRequestedV2
from bus.contract.registry import event_data, schema_uri
from bus.publisher import AsyncPublisher
from bus.topology import ServiceQueue, Topology, declare_all
from projections import log as event_log
from projections.dashboard import create_app
from projections.service import SERVICE, build_service, run
from tests.projection_support import (
    DASHBOARD_AUTH,
    control_events,
    dashboard_access,
    hot_client_flow,
    hot_server_flow,
    ip_finished,
)

pytestmark = [pytest.mark.rabbit]
DELAYS = (100, 200)
NEWEST_ID, OLD_ID = "350cf0ef-c12e-4bcc-d0df-369a09a4a357", "0a1d0000-0000-4000-8000-000000000017"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'projection.db'}"
    return request.getfixturevalue("postgres_url")


async def _wait_for(fetch, ok, timeout=20.0):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = await fetch()
        if ok(last):
            return last
        await asyncio.sleep(0.1)
    raise AssertionError(f"not reached within {timeout}s; last: {last}")


async def _started(amqp_url, database_url, **kw):
    # The queue exists before anything is published, whenever the consumer gets going.
    await declare_all(amqp_url, Topology(), [ServiceQueue(service=SERVICE, bindings=("#",), retry_delays_ms=DELAYS)])
    consumer, projection = build_service(amqp_url=amqp_url, database_url=database_url, retry_delays_ms=DELAYS, **kw)
    stop = asyncio.Event()
    task = asyncio.create_task(run(consumer, projection, stop))
    return consumer, projection, stop, task


@pytest.mark.parametrize("ingest_in_worker", [True, False], ids=["worker-process", "thread"])
async def test_published_events_in_any_order_with_redeliveries_are_visible_in_the_json_api(
        amqp_url, database_url, ingest_in_worker):
    flow = hot_server_flow() + hot_client_flow()
    # Queue everything before the consumer starts, so the burst is taken in batches.
    await declare_all(amqp_url, Topology(), [ServiceQueue(service=SERVICE, bindings=("#",), retry_delays_ms=DELAYS)])
    shuffled = flow + flow[:4]
    random.Random(7).shuffle(shuffled)
    async with AsyncPublisher(amqp_url) as pub:
        for env, _ in shuffled:
            await pub.publish(env)
    _consumer, projection, stop, task = await _started(amqp_url, database_url, ingest_in_worker=ingest_in_worker)
    app = create_app(database_url, access=dashboard_access())
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://dash",
                                     headers=DASHBOARD_AUTH) as client:
            server_id, client_id = flow[0][0].updateid, hot_client_flow()[0][0].updateid
            detail = await _wait_for(
                lambda: client.get(f"/api/updates/{server_id}"),
                lambda r: r.status_code == 200 and r.json()["event_count"] == len(hot_server_flow()),
            )
            body = detail.json()
            assert (body["stage"], body["status"]) == ("completed", "failed")
            assert body["servers"] == {"expected": 7, "ok": 6, "failed": 1, "pending": 0, "not_run": 0}
            assert body["server_list"][0]["server"] == "qq_1" and body["server_list"][0]["ok"] is False
            assert [e["position"] for e in body["events"]] == sorted(e["position"] for e in body["events"])

            listing = await _wait_for(lambda: client.get("/api/updates"), lambda r: r.json()["total"] == 2)
            by_id = {u["updateid"]: u for u in listing.json()["items"]}
            assert by_id[client_id]["cdn_dirs"] == {"expected": 2, "ok": 1, "failed": 1, "pending": 0, "not_run": 0}
            failed_only = (await client.get("/api/updates", params={"type": "hot_client", "status": "failed"})).json()
            assert [u["updateid"] for u in failed_only["items"]] == [client_id]
    finally:
        stop.set()
        await task
    assert projection.batches < len(shuffled)  # a prefetched burst went in shared transactions
    with Session(projection.engine) as s:
        result = event_log.verify(s)
    assert result.ok and result.count == len(flow)


async def test_malformed_invalid_and_unappliable_events_are_parked_and_listed_with_their_reasons(
        amqp_url, database_url):
    flow = hot_server_flow(complete=False)
    request = flow[4][0]
    # valid as an event, but its IP is too long for the view: logged, never applied, retried, then parked
    poison = ip_finished(request, "fe80::1%" + "x" * 200, "game", {"qq_9": True}, offset=30, minutes=9)
    consumer, _projection, stop, task = await _started(amqp_url, database_url)
    app = create_app(database_url, access=dashboard_access())
    try:
        async with AsyncPublisher(amqp_url) as pub:
            for env, _ in flow:
                await pub.publish(env)
            await pub.publish(poison)
        # what other teams' tools might send: not JSON, and a server called <script>
        connection = await aio_pika.connect(amqp_url)
        async with connection:
            channel = await connection.channel()
            exchange = await channel.get_exchange(Topology().events_exchange)
            await exchange.publish(aio_pika.Message(b"{not json", message_id="garbage-1"),
                                   routing_key="ssss.cn.ip.finished.v1")
            forged = flow[6][0].model_dump(mode="json")
            forged["id"] = "forged-1"
            forged["data"]["update_data"] = {"<script>alert(1)</script>": {"data": "x", "status": True}}
            await exchange.publish(aio_pika.Message(json.dumps(forged).encode(), message_id="forged-1"),
                                   routing_key="ssss.cn.ip.finished.v1")

        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://dash",
                                     headers=DASHBOARD_AUTH) as client:
            rejected = await _wait_for(lambda: client.get("/api/rejected"), lambda r: r.json()["total"] == 3)
            reasons = {r["message_id"]: r["reason"] for r in rejected.json()["items"]}
            assert reasons["garbage-1"].startswith("malformed: body is not JSON")
            assert "update_data" in reasons["forged-1"] and "not a valid name" in reasons["forged-1"]
            assert reasons[poison.id].startswith("handler failed after 3 attempts")
            assert "at most 128" in reasons[poison.id]

            detail = (await client.get(f"/api/updates/{request.updateid}")).json()
            assert detail["event_count"] == len(flow)  # the poison event is in the log but not in the view
            unapplied = [e for e in detail["events"] if not e["applied"]]
            assert [e["event_id"] for e in unapplied] == [poison.id]
            assert {r["message_id"] for r in detail["rejected"]} == {"forged-1", poison.id}

            page = (await client.get("/rejected")).text
            assert "<script>alert(1)</script>" not in page
            assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    finally:
        stop.set()
        await task
    assert consumer.parked == 3


def _sent_as(env: Envelope, model: type[Event], **data: Any) -> Envelope:
    """``env`` as a producer still speaking ``model``'s version sends it (its data must fit that version)."""
    fitted = event_data(model.model_validate({**env.data, **data}, strict=True))
    return env.model_copy(update={"type": model.type_name(), "dataschema": schema_uri(model.type_name()),
                                  "data": fitted})


def _rolled_out(updateid: str, old: bool) -> list[Envelope]:
    """A hot_server update in two batches; ``old``: its request and batches in the versions before issue 17's."""
    flow = [env for env, _ in hot_server_flow(updateid=updateid)]
    plan = {"batch_size": 2, "pause_seconds": 5, "on_failure": "confirm"}
    flow[4] = _sent_as(flow[4], UpdateRequestedV2 if old else UpdateRequested, rollout=plan)
    batches = [env for name, env in control_events(flow[4]).items() if name.startswith("batch")]
    if old:
        batches = [_sent_as(env, BatchFinishedV1) for env in batches]
    return flow + batches


async def test_a_request_and_batches_in_the_old_versions_show_as_the_newest_do(amqp_url, database_url):
    newest, old = _rolled_out(NEWEST_ID, old=False), _rolled_out(OLD_ID, old=True)
    assert {e.type for e in old} >= {"hotupdate.update.requested.v2", "hotupdate.batch.finished.v1"}
    _consumer, _projection, stop, task = await _started(amqp_url, database_url)
    app = create_app(database_url, access=dashboard_access())
    try:
        async with AsyncPublisher(amqp_url) as pub:
            for env in newest + old:
                await pub.publish(env)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://dash",
                                     headers=DASHBOARD_AUTH) as client:
            async def view(flow: list[Envelope]) -> dict[str, Any]:
                done = await _wait_for(lambda: client.get(f"/api/updates/{flow[0].updateid}"),
                                       lambda r: r.status_code == 200 and r.json()["event_count"] == len(flow))
                return dict(done.json())

            views = [await view(newest), await view(old)]
    finally:
        stop.set()
        await task
    shown = [{k: v for k, v in view.items() if k not in ("updateid", "events")} for view in views]
    assert shown[0]["rollout"]["on_failure"] == "confirm" and len(shown[0]["batch_list"]) == 2
    assert json.dumps(shown[1], sort_keys=True).replace(OLD_ID, NEWEST_ID) == json.dumps(shown[0], sort_keys=True)
