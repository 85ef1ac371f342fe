"""The ops executor service end to end: a real broker, the consumer runtime, real Erlang nodes."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest

from bus.contract.envelope import Envelope
from bus.contract.events import CdnDirFinished, Event, IpFinished, UpdateCompleted, UpdateStarted
from bus.contract.registry import DEFAULT_REGISTRY
from bus.publisher import AsyncPublisher
from bus.topology import Topology, binding
from consumers.ops_executor.service import build_service
from consumers.ops_executor.state import StateStore
from demo.erlang import ErlangNodes, compile_module
from tests.busprobe import Probe
from tests.ops_world import PROJECT, World, hot_client_request, hot_server_request

pytestmark = [pytest.mark.rabbit]

IP_A, IP_B = "127.0.0.1", "127.0.0.2"
RESULTS = (binding(UpdateStarted, project=PROJECT), binding(IpFinished, project=PROJECT),
           binding(CdnDirFinished, project=PROJECT), binding(UpdateCompleted, project=PROJECT))
SLOW_IF_MARKED = 'case filelib:is_file("slow") of true -> timer:sleep(infinity); false -> ok end'


def server(world: World, nodes: ErlangNodes, ip: str, base: str) -> str:
    name = world.name(base)
    root = world.server_dir(ip, name)
    compile_module(world.module, 1, root / "ebin")
    nodes.start(name, root, root / "ebin")
    return name


def status_of(store: StateStore, uid: str) -> str:
    record = store.tables.get(uid)
    assert record is not None
    return record.status


def runs(world: World, ip: str, name: str) -> int:
    counter = world.server_dir(ip, name) / "runs"
    return len(counter.read_bytes()) if counter.exists() else 0


def decoded(probe: Probe) -> list[Event]:
    return [DEFAULT_REGISTRY.decode(Envelope.from_bytes(m.body)) for m in probe.messages]


async def wait_completed(probe: Probe, count: int = 1, timeout: float = 60) -> list[Event]:
    deadline = asyncio.get_running_loop().time() + timeout
    while sum(isinstance(e, UpdateCompleted) for e in decoded(probe)) < count:
        assert asyncio.get_running_loop().time() < deadline, f"no completion in {timeout}s: {decoded(probe)}"
        await asyncio.sleep(0.1)
    return decoded(probe)


@pytest.mark.erlang
async def test_update_requested_on_the_bus_updates_running_nodes_and_reports_back(world, nodes, amqp_url):
    s1, s2 = server(world, nodes, IP_A, "qq_1"), server(world, nodes, IP_B, "qq_2")
    uid = str(uuid.uuid4())
    beam = compile_module(world.module, 2, world.root / "build_v2")
    env, _ = hot_server_request(world, uid, world.push(uid, {beam.name: beam.read_bytes()}),
                                {"game": {IP_A: [s1], IP_B: [s2]}},
                                [f"c:l({world.module})", f"{world.module}:bump()"])
    marker = world.root / "pwned"
    evil = json.loads(env.to_bytes())
    evil["id"] = str(uuid.uuid4())
    evil["updateid"] = str(uuid.uuid4())
    evil["data"]["update_server_list"] = {"game": {IP_A: [f"x;touch${{IFS}}{marker}"]}}
    service = build_service(world.config(amqp_url), "om1")
    await service.start()
    try:
        async with Probe(amqp_url) as results, Probe(amqp_url) as parked, AsyncPublisher(amqp_url) as pub:
            await results.bind(*RESULTS)
            await parked.watch(Topology().parking_queue("ops_executor.om1"))
            await results.publish_raw(json.dumps(evil).encode(), env.routing_key)
            await pub.publish(env)
            events = await wait_completed(results)
            await pub.publish(env)  # the same event again: handled once only
            (refused,) = await parked.wait_for(1)
            await asyncio.sleep(1.0)
    finally:
        await service.stop()

    assert [nodes.apply(s, world.module, "version") for s in (s1, s2)] == ["2", "2"]
    assert runs(world, IP_A, s1) == 1 and runs(world, IP_B, s2) == 1
    assert [type(e) for e in events] == [UpdateStarted, IpFinished, IpFinished, UpdateCompleted]
    assert isinstance(events[-1], UpdateCompleted)
    assert events[-1].final_result is True and events[-1].final_data == "全部完成"
    children = [Envelope.from_bytes(m.body) for m in results.messages]
    assert {c.causationid for c in children} == {env.id} and {c.updateid for c in children} == {uid}
    assert len(children) == 4  # nothing more after the duplicate
    assert "not a valid name" in str(refused.headers["x-hotupdate-park-reason"])
    assert not marker.exists()


@pytest.mark.erlang
async def test_stopping_mid_update_interrupts_it_and_the_next_process_finishes_it_without_rerunning(
        world, nodes, amqp_url):
    fast, slow = server(world, nodes, IP_A, "qq_1"), server(world, nodes, IP_B, "qq_2")
    (world.server_dir(IP_B, slow) / "slow").write_text("hang")
    uid = str(uuid.uuid4())
    beam = compile_module(world.module, 2, world.root / "build_v2")
    env, _ = hot_server_request(world, uid, world.push(uid, {beam.name: beam.read_bytes()}),
                                {"game": {IP_A: [fast], IP_B: [slow]}},
                                [f"c:l({world.module})", SLOW_IF_MARKED, f"{world.module}:bump()"])
    async with Probe(amqp_url) as results, AsyncPublisher(amqp_url) as pub:
        await results.bind(*RESULTS)
        first = build_service(world.config(amqp_url), "om1")
        await first.start()
        await pub.publish(env)
        store = StateStore(world.state_url)
        for _ in range(300):
            if store.tables.server_results(uid):
                break
            await asyncio.sleep(0.1)
        await first.stop()  # what the CLI does on SIGTERM
        assert status_of(store, uid) == "interrupted"
        assert runs(world, IP_A, fast) == 1 and runs(world, IP_B, slow) == 0

        (world.server_dir(IP_B, slow) / "slow").unlink()
        second = build_service(world.config(amqp_url), "om1")
        await second.start()
        try:
            events = await wait_completed(results)
            await asyncio.sleep(2.5)  # the request's retry copy comes back too: answered, not re-run
        finally:
            await second.stop()

    # the slow server was cut off mid-commands: reported as interrupted, never run a second time
    assert runs(world, IP_A, fast) == 1 and runs(world, IP_B, slow) == 0
    assert status_of(store, uid) == "finished"
    done = [e for e in events if isinstance(e, UpdateCompleted)]
    assert done[0].final_result is False and done[0].failed_count == 1
    ids = [Envelope.from_bytes(m.body).id for m in results.messages]
    assert len(set(ids)) == 4  # repeats carry the same ids, so downstream keeps one of each
    store.close()


async def test_service_resumes_an_update_left_running_without_waiting_for_a_delivery(world, amqp_url):
    uid = str(uuid.uuid4())
    env, event = hot_client_request(world, uid, world.push(uid, {"a.txt": b"v2"}), [("res.x.com", "t1")])
    store = StateStore(world.state_url)
    store.tables.claim(update_id=uid, project=PROJECT, area="cn", update_type="hot_client", version=event.version,
                request=env.model_dump_json())  # a process claimed it, then crashed; its message is gone
    async with Probe(amqp_url) as results:
        await results.bind(*RESULTS)
        service = build_service(world.config(amqp_url), "om1")
        await service.start()
        try:
            events = await wait_completed(results)
        finally:
            await service.stop()
    assert [type(e) for e in events] == [UpdateStarted, CdnDirFinished, UpdateCompleted]
    assert isinstance(events[-1], UpdateCompleted) and events[-1].final_result is True
    assert (world.cdn_root / "res.x.com" / "t1" / "a.txt").read_bytes() == b"v2"
    assert status_of(store, uid) == "finished"
    store.close()
