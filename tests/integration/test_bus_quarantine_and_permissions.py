"""Quarantine (parked messages), per-team topic permissions and identity, on the real broker."""

from __future__ import annotations

import asyncio
import json
import uuid
from urllib.parse import unquote, urlsplit, urlunsplit

import pytest

from bus.consumer import ConsumerService
from bus.contract.events import PullRequested
from bus.contract.examples import EXAMPLES
from bus.contract.registry import make_envelope
from bus.identity import Identity
from bus.parking import ParkingQueues
from bus.permissions import apply_grant, team_grant
from bus.publisher import AsyncPublisher, PublishError, SyncPublisher
from bus.topology import ServiceQueue, Topology, binding, declare_all
from cli.main import main as cli_main
from tests.busprobe import Probe

pytestmark = [pytest.mark.rabbit]


def _env(source="tests", project="ssss"):
    return make_envelope(EXAMPLES[0], source=source, updateid="u-1", project=project, area="cn")


async def _service_with_parked(amqp_url, bodies, handler=None, identity=None, user_id=None):
    seen: list[str] = []

    async def record(msg, emit):
        seen.append(msg.envelope.id)

    service = ConsumerService(
        amqp_url=amqp_url,
        queue=ServiceQueue(service="svc", bindings=(binding(PullRequested),)),
        handlers={PullRequested: handler or record},
        source="tests/svc",
        identity=identity,
    )
    await service.start()
    async with Probe(amqp_url) as probe:
        for i, body in enumerate(bodies):
            await probe.publish_raw(body, "ssss.cn.pull.requested.v1", message_id=f"m{i}", user_id=user_id)
    for _ in range(200):
        if service.parked + len(seen) >= len(bodies):
            break
        await asyncio.sleep(0.05)
    return service, seen


async def test_parked_messages_are_listed_with_reasons_and_listing_removes_nothing(amqp_url):
    service, _ = await _service_with_parked(amqp_url, [b"{oops", b"[]"])
    await service.stop()
    queues = ParkingQueues(amqp_url)
    first = await asyncio.to_thread(queues.peek, "svc")
    second = await asyncio.to_thread(queues.peek, "svc")
    assert [m.message_id for m in first] == ["m0", "m1"]
    assert [m.message_id for m in second] == ["m0", "m1"]
    assert "not JSON" in first[0].reason and "not a JSON object" in first[1].reason
    assert first[0].body == b"{oops"


async def test_requeue_after_a_fix_delivers_the_parked_message_to_its_service(amqp_url):
    good = _env()
    raw = good.model_dump(mode="json")
    raw["data"]["requested_by"] = "bad name with spaces"  # invalid today
    service, seen = await _service_with_parked(amqp_url, [json.dumps(raw).encode()])
    assert service.parked == 1 and seen == []
    # "the fix": the message is corrected by replacing it (here: requeue a valid copy parked by hand)
    queues = ParkingQueues(amqp_url)
    await asyncio.to_thread(queues.purge, "svc", {"m0"})
    async with Probe(amqp_url) as probe:
        ch = probe.channel
        import aio_pika

        await ch.default_exchange.publish(
            aio_pika.Message(good.to_bytes(), message_id="fixed", headers={
                "x-hotupdate-park-reason": "was bad", "x-hotupdate-original-routing-key": good.routing_key}),
            routing_key=Topology().parking_queue("svc"),
        )
    assert [m.message_id for m in await asyncio.to_thread(queues.peek, "svc")] == ["fixed"]
    requeued = await asyncio.to_thread(queues.requeue, "svc", None)
    assert [m.message_id for m in requeued] == ["fixed"]
    for _ in range(200):
        if seen:
            break
        await asyncio.sleep(0.05)
    await service.stop()
    assert seen == [good.id]
    assert await asyncio.to_thread(queues.peek, "svc") == []


async def test_purge_deletes_only_what_it_is_told_to(amqp_url):
    service, _ = await _service_with_parked(amqp_url, [b"x1", b"x2", b"x3"])
    await service.stop()
    queues = ParkingQueues(amqp_url)
    gone = await asyncio.to_thread(queues.purge, "svc", {"m1"})
    assert [m.message_id for m in gone] == ["m1"]
    assert [m.message_id for m in await asyncio.to_thread(queues.peek, "svc")] == ["m0", "m2"]


async def test_parked_cli_lists_and_refuses_purge_without_a_selection(amqp_url, capsys):
    service, _ = await _service_with_parked(amqp_url, [b"nope"])
    await service.stop()
    code = await asyncio.to_thread(cli_main, ["parked", "list", "svc", "--amqp-url", amqp_url, "--json"])
    rows = json.loads(capsys.readouterr().out)
    assert code == 0 and rows[0]["message_id"] == "m0" and "not JSON" in rows[0]["reason"]
    with pytest.raises(SystemExit, match="--all"):
        await asyncio.to_thread(cli_main, ["parked", "purge", "svc", "--amqp-url", amqp_url])
    assert len(await asyncio.to_thread(ParkingQueues(amqp_url).peek, "svc")) == 1


async def test_event_from_a_broker_user_that_may_not_publish_it_is_parked_whatever_its_source_says(amqp_url):
    # guest stands for a user the table does not name for pull.requested of ssss
    table = Identity({("pull.requested", "ssss"): frozenset({"hotupdate.cmdb"})})
    forged = _env(source="hotupdate/cmdb")
    other_project = _env(source="hotupdate/cmdb", project="snqxz")
    service, seen = await _service_with_parked(
        amqp_url, [forged.to_bytes(), other_project.to_bytes()], identity=table, user_id="guest"
    )
    await service.stop()
    parked = await asyncio.to_thread(ParkingQueues(amqp_url).peek, "svc")
    assert seen == []
    assert [m.message_id for m in parked] == ["m0", "m1"]
    assert parked[0].reason.startswith("identity: broker user 'guest' may not publish hotupdate.pull.requested.v1 "
                                       "for project 'ssss' (allowed: hotupdate.cmdb)")
    # published on an ssss routing key, it says snqxz: refused before anyone asks who sent it
    assert parked[1].reason.startswith("routing: the envelope (hotupdate.pull.requested.v1 for project 'snqxz'")
    assert parked[0].headers["x-hotupdate-publisher"] == "guest"


async def test_event_without_a_verified_publisher_is_parked(amqp_url):
    table = Identity({("pull.requested", "ssss"): frozenset({"guest"})}, shared_user="guest")
    service, seen = await _service_with_parked(amqp_url, [_env().to_bytes()], identity=table)
    await service.stop()
    parked = await asyncio.to_thread(ParkingQueues(amqp_url).peek, "svc")
    assert seen == [] and len(parked) == 1
    assert "carries no verified publisher" in parked[0].reason


def _as_user(url: str, user: str, password: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, f"{user}:{password}@{host}", parts.path, "", ""))


async def test_team_user_may_publish_only_its_projects_routing_keys(amqp_url, broker):
    await declare_all(amqp_url, Topology())
    vhost = unquote(urlsplit(amqp_url).path[1:])
    user, password = f"team-{uuid.uuid4().hex[:8]}", "s3cret"
    await asyncio.to_thread(apply_grant, team_grant(user, ["snqxz"], vhost=vhost), password=password)
    try:
        team_url = _as_user(amqp_url, user, password)
        async with Probe(amqp_url) as probe:
            await probe.bind("#")
            with SyncPublisher(team_url, declare=False, retry_seconds=2) as pub:
                ok = pub.publish(_env(project="snqxz"))
                with pytest.raises(PublishError, match="ACCESS_REFUSED"):
                    pub.publish(_env(project="ssss"))
            got = await probe.wait_for(1)
            await asyncio.sleep(0.3)
        assert [m.message_id for m in probe.messages] == [ok.id]
        assert got[0].routing_key.startswith("snqxz.")
        # the async publisher reports the refusal as an error too
        async with AsyncPublisher(team_url, retry_seconds=2, declare=False) as async_pub:
            await async_pub.publish(_env(project="snqxz"))
            with pytest.raises(PublishError, match="ACCESS_REFUSED"):
                await async_pub.publish(_env(project="ssss"))
    finally:
        await asyncio.to_thread(broker.rabbitmqctl, "delete_user", user)
