"""The attacks of issue 15, played against real components logged in as their own provisioned broker users.

A team user made the way the old docs said (`rabbitmq grant --projects ssss`: every routing key of
ssss) claims to be the CMDB or the ops executor, writes another project's update through an ssss
routing key, or forges the headers a retry copy carries. Each is parked with its reason where an
operator sees it, nothing runs, and the legitimate event next to it is handled.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sqlite3
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aio_pika
import httpx
import pytest

from bus.consumer import ConsumerService
from bus.contract.envelope import Envelope
from bus.contract.events import FilesPulled, IpFinished, PullFailed, PullRequested, UpdateAbortRequested
from bus.contract.examples import EXAMPLES
from bus.contract.registry import make_envelope
from bus.handling import Incoming
from bus.identity import identity_from_config
from bus.parking import ParkedMessage, ParkingQueues
from bus.permissions import apply_grant, team_grant
from bus.publisher import AsyncPublisher
from bus.topology import ServiceQueue, Topology, binding
from consumers.file_pull.service import build_service as build_file_pull
from producers.cmdb.app import run as run_cmdb
from producers.cmdb.bootstrap import bootstrap
from projections.dashboard import create_app
from projections.service import build_service as build_projection
from projections.service import run as run_projection
from tests.busprobe import Probe
from tests.identity_support import Provisioned, as_user, provisioned
from tests.projection_support import DASHBOARD_AUTH, dashboard_access

pytestmark = [pytest.mark.rabbit]

VERSION = "004200000"
FILES = {"ebin/role_server.beam": b"\x83beam" * 100, "config/skill.config": b"{skill, 1}.\n"}


@pytest.fixture(scope="module")
def rig(broker, tmp_path_factory):
    with provisioned(tmp_path_factory.mktemp("attacks"), broker) as provisioned_rig:
        yield provisioned_rig


@pytest.fixture(scope="module")
def wide_team(rig: Provisioned, broker) -> str:
    """A team user as `rabbitmq grant --projects ssss` made it: any routing key of ssss; its URL."""
    user = f"team.wide{uuid.uuid4().hex[:8]}"
    password = uuid.uuid4().hex
    vhost = rig.grants[0].vhost
    apply_grant(team_grant(user, ["ssss"], vhost=vhost), password=password)
    try:
        yield as_user(rig.admin_url, user, password)
    finally:
        broker.rabbitmqctl("delete_user", user)


def _login(url: str) -> str:
    from bus.publisher import broker_login

    return broker_login(url)


def _dashboard(database_url: str):
    """The dashboard app, as a reader granted every project sees it (send DASHBOARD_AUTH)."""
    return create_app(database_url, access=dashboard_access())


def _example(model: type, *, updateid: str, project: str = "ssss", source: str) -> Envelope:
    event = next(e for e in EXAMPLES if type(e) is model)
    return make_envelope(event, source=source, updateid=updateid, project=project, area="cn")


def _pull(updateid: str, source: str = "hotupdate/cmdb", project: str = "ssss") -> Envelope:
    event = PullRequested(update_type="hot_server", version=VERSION, area_name="大陆", requested_by="alice")
    return make_envelope(event, source=source, updateid=updateid, project=project, area="cn")


def _write_version(rig: Provisioned) -> None:
    reload = rig.config.receiver("recv1").version_root / "server" / "ssss" / "cn" / VERSION / "reloadfiles"
    for name, data in FILES.items():
        (reload / name).parent.mkdir(parents=True, exist_ok=True)
        (reload / name).write_bytes(data)


def _backup(rig: Provisioned, updateid: str) -> Path:
    return rig.config.receiver("recv1").backup_root / "hot_server" / "ssss" / "cn" / updateid / VERSION


async def _parked(rig: Provisioned, service: str, ids: set[str], timeout: float = 20) -> dict[str, ParkedMessage]:
    """The parked messages of ``service`` with these ids, waiting until all are there."""
    queues = ParkingQueues(rig.admin_url)
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        found = {m.message_id: m for m in await asyncio.to_thread(queues.peek, service) if m.message_id in ids}
        if set(found) == ids:
            return {k: v for k, v in found.items() if k is not None}
        assert asyncio.get_running_loop().time() < deadline, f"{service}: parked {sorted(found)} of {sorted(ids)}"
        await asyncio.sleep(0.1)


def _identity_reason(publisher: str, event_type: str, allowed: list[str]) -> str:
    return (f"identity: broker user {publisher!r} may not publish {event_type} for project 'ssss' "
            f"(allowed: {', '.join(sorted(allowed))})")


@contextlib.asynccontextmanager
async def _file_pull(rig: Provisioned) -> AsyncIterator[ConsumerService]:
    """file_pull of recv1, logged in as its own user (HOTUPDATE_AMQP_URL on its machine)."""
    service = build_file_pull(rig.config_as(rig.component("file_pull", "recv1")), "recv1")
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


async def test_team_user_claiming_to_be_the_cmdb_makes_file_pull_copy_nothing_and_is_parked(rig, wide_team):
    _write_version(rig)
    cmdb = rig.component("cmdb")
    forged, forged_headers, legit = _pull("u-forged-1"), _pull("u-forged-2"), _pull("u-legit-1")
    async with _file_pull(rig), Probe(rig.admin_url) as probe:
        await probe.bind(binding(FilesPulled), binding(PullFailed))
        async with AsyncPublisher(wide_team, declare=False) as attacker:
            await attacker.publish(forged)
            # and the headers a retry copy carries, naming the CMDB as the original publisher
            await attacker.publish(forged_headers, headers={"x-hotupdate-publisher": cmdb,
                                                            "x-hotupdate-original-routing-key": legit.routing_key})
        async with AsyncPublisher(rig.url(cmdb)) as cmdb_pub:
            await cmdb_pub.publish(legit)
        (answer,) = await probe.wait_for(1)
        parked = await _parked(rig, "file_pull.recv1", {forged.id, forged_headers.id})
        await asyncio.sleep(0.3)
    assert len(probe.messages) == 1
    assert Envelope.from_bytes(answer.body).causationid == legit.id
    assert answer.user_id == rig.component("file_pull", "recv1")  # the broker vouches for who answered
    reason = _identity_reason(_login(wide_team), "hotupdate.pull.requested.v1", [cmdb, rig.team_user])
    assert parked[forged.id].reason == reason
    assert parked[forged_headers.id].reason == reason
    assert parked[forged_headers.id].headers["x-hotupdate-publisher"] == _login(wide_team)  # who really sent it
    assert _backup(rig, "u-legit-1").is_dir()
    assert not _backup(rig, "u-forged-1").exists() and not _backup(rig, "u-forged-2").exists()


async def test_envelope_naming_another_project_on_an_ssss_routing_key_is_parked_with_the_routing_reason(
        rig, wide_team):
    _write_version(rig)
    other = _pull("u-other-project", project="snqxz")
    async with _file_pull(rig) as service:
        connection = await aio_pika.connect(wide_team)
        async with connection:
            channel = await connection.channel(publisher_confirms=True)
            exchange = await channel.get_exchange(Topology().events_exchange, ensure=False)
            await exchange.publish(aio_pika.Message(other.to_bytes(), message_id=other.id, user_id=_login(wide_team)),
                                   routing_key="ssss.cn.pull.requested.v1")
        parked = await _parked(rig, "file_pull.recv1", {other.id})
        assert service.handled == 0
    assert parked[other.id].reason == (
        "routing: the envelope (hotupdate.pull.requested.v1 for project 'snqxz', area 'cn') belongs on routing "
        "key 'snqxz.cn.pull.requested.v1' but was published with 'ssss.cn.pull.requested.v1'")
    assert not (rig.config.receiver("recv1").backup_root / "hot_server" / "snqxz").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _until(check, timeout: float = 20) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "not reached in time"
        await asyncio.sleep(0.05)


async def test_forged_ip_finished_is_parked_by_the_cmdb_and_the_projection_and_shown_as_rejected(
        rig, wide_team, tmp_path):
    ops1 = rig.component("ops_executor", "ops1")
    forged = _example(IpFinished, updateid="u-forged-ip", source="hotupdate/ops_executor/ops1")
    legit = _example(IpFinished, updateid="u-legit-ip", source="hotupdate/ops_executor/ops1")
    projection_db = f"sqlite:///{tmp_path / 'projection.db'}"
    runtime = bootstrap(rig.config_as(rig.component("cmdb")), f"sqlite:///{tmp_path / 'cmdb.db'}",
                        publish_retry_seconds=0.5)
    consumer, projection = build_projection(
        amqp_url=rig.url(rig.component("projection")), database_url=projection_db, retry_delays_ms=(100,),
        identity=identity_from_config(rig.config), ingest_in_worker=False,
    )
    stop = asyncio.Event()
    tasks = [asyncio.create_task(run_cmdb(runtime, host="127.0.0.1", port=_free_port(), stop=stop)),
             asyncio.create_task(run_projection(consumer, projection, stop))]
    try:
        await _until(lambda: runtime.consumer.started and consumer.started)
        async with AsyncPublisher(wide_team, declare=False) as attacker:
            await attacker.publish(forged)
        async with AsyncPublisher(rig.url(ops1)) as executor:
            await executor.publish(legit)
        cmdb_parked = await _parked(rig, "cmdb", {forged.id})
        await _until(lambda: runtime.consumer.handled >= 1 and consumer.handled >= 1 and consumer.parked >= 1)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=_dashboard(projection_db)),
                                     headers=DASHBOARD_AUTH,
                                     base_url="http://dash") as client:
            rejected = (await client.get("/api/rejected")).json()["items"]
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    reason = _identity_reason(_login(wide_team), "hotupdate.ip.finished.v1", [ops1])
    assert cmdb_parked[forged.id].reason == reason
    assert {r["message_id"]: r["reason"] for r in rejected} == {forged.id: reason}
    with contextlib.closing(sqlite3.connect(tmp_path / "projection.db")) as db:
        logged = {row[0] for row in db.execute("SELECT event_id FROM projection_event_log")}
    assert legit.id in logged and forged.id not in logged


async def test_a_retried_event_keeps_its_verified_publisher_and_nobody_else_can_claim_one(rig, wide_team):
    """The retry copy is published by the service itself; what it says of the original is believed
    only from the service's own login. Others writing straight into its queue are not believed."""
    ops1, cmdb = rig.component("ops_executor", "ops1"), rig.component("cmdb")
    seen: list[tuple[str, str]] = []

    async def fail_once(msg: Incoming[UpdateAbortRequested], emit) -> None:
        seen.append((msg.envelope.id, msg.publisher))
        if len(seen) == 1:
            raise RuntimeError("first attempt fails")

    service = ConsumerService(
        amqp_url=rig.url(ops1),
        queue=ServiceQueue(service="ops_executor.ops1",
                           bindings=(binding(UpdateAbortRequested, project="ssss"),), retry_delays_ms=(100,)),
        handlers={UpdateAbortRequested: fail_once},
        source="hotupdate/ops_executor/ops1",
        identity=identity_from_config(rig.config),
    )
    legit = _example(UpdateAbortRequested, updateid="u-abort", source="hotupdate/cmdb")
    forged = _example(UpdateAbortRequested, updateid="u-abort-forged", source="hotupdate/cmdb")
    smuggled = _example(UpdateAbortRequested, updateid="u-abort-smuggled", source="hotupdate/cmdb")
    await service.start()
    try:
        async with AsyncPublisher(rig.url(cmdb)) as cmdb_pub:
            await cmdb_pub.publish(legit)
        async with AsyncPublisher(wide_team, declare=False) as attacker:
            await attacker.publish(forged, headers={"x-hotupdate-publisher": cmdb})
        # Another component may write into any queue through the default exchange (its own retries
        # need that), so it tries to pass off a copy as one of the executor's own retries.
        file_pull = rig.url(rig.component("file_pull", "recv1"))
        connection = await aio_pika.connect(file_pull)
        async with connection:
            channel = await connection.channel(publisher_confirms=True)
            await channel.default_exchange.publish(
                aio_pika.Message(smuggled.to_bytes(), message_id=smuggled.id, user_id=_login(file_pull),
                                 headers={"x-hotupdate-publisher": cmdb,
                                          "x-hotupdate-original-routing-key": smuggled.routing_key}),
                routing_key=Topology().queue("ops_executor.ops1"))
        parked = await _parked(rig, "ops_executor.ops1", {forged.id, smuggled.id})
        await _until(lambda: service.handled == 1)
    finally:
        await service.stop()
    assert seen == [(legit.id, cmdb), (legit.id, cmdb)]  # the retry was still the CMDB's
    assert parked[forged.id].reason == _identity_reason(
        _login(wide_team), "hotupdate.update.abort_requested.v1", [cmdb])
    assert parked[smuggled.id].reason.startswith("routing: ")
    assert "but was published with 'hotupdate.ops_executor.ops1'" in parked[smuggled.id].reason


async def test_deeply_nested_json_is_parked_as_malformed_by_file_pull_and_the_projection(rig, wide_team, tmp_path):
    body = b'{"id":"deep","data":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    projection_db = f"sqlite:///{tmp_path / 'projection.db'}"
    consumer, projection = build_projection(
        amqp_url=rig.url(rig.component("projection")), database_url=projection_db,
        identity=identity_from_config(rig.config), ingest_in_worker=False,
    )
    stop = asyncio.Event()
    async with _file_pull(rig):
        task = asyncio.create_task(run_projection(consumer, projection, stop))
        try:
            await _until(lambda: consumer.started)
            connection = await aio_pika.connect(wide_team)
            async with connection:
                channel = await connection.channel(publisher_confirms=True)
                exchange = await channel.get_exchange(Topology().events_exchange, ensure=False)
                await exchange.publish(aio_pika.Message(body, message_id="nested-1", user_id=_login(wide_team)),
                                       routing_key="ssss.cn.pull.requested.v1")
            parked = await _parked(rig, "file_pull.recv1", {"nested-1"})
            await _parked(rig, "projection", {"nested-1"})
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=_dashboard(projection_db)),
                                     headers=DASHBOARD_AUTH,
                                         base_url="http://dash") as client:
                await _until(lambda: consumer.parked >= 1)
                rejected = (await client.get("/api/rejected")).json()["items"]
        finally:
            stop.set()
            await task
    assert parked["nested-1"].reason == "malformed: body is not JSON: nesting too deep"
    assert [(r["message_id"], r["reason"]) for r in rejected if r["message_id"] == "nested-1"] == [
        ("nested-1", "malformed: body is not JSON: nesting too deep")]
