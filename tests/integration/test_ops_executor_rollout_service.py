"""Rollout, go-ahead and abort through a real broker and the consumer runtime (fake hosts, tests/fleet.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from bus.contract.envelope import Envelope
from bus.contract.events import (
    BatchConfirmed,
    BatchFinished,
    CdnDirFinished,
    Event,
    IpFinished,
    UpdateAbortRequested,
    UpdateCompleted,
    UpdateRequestedV1,
    UpdateRequestedV2,
    UpdateStarted,
)
from bus.contract.registry import DEFAULT_REGISTRY, event_data, make_envelope
from bus.publisher import AsyncPublisher
from bus.topology import binding
from consumers.ops_executor.service import build_service
from consumers.ops_executor.state import StateStore
from tests.busprobe import Probe
from tests.fleet import Fleet
from tests.ops_world import AREA, PROJECT, World, envelope_of

pytestmark = [pytest.mark.rabbit]

IPS = [Fleet.ip(i) for i in range(1, 11)]
RESULTS = tuple(binding(kind, project=PROJECT)
                for kind in (UpdateStarted, IpFinished, CdnDirFinished, BatchFinished, UpdateCompleted))


@pytest.fixture
def fleet(tmp_path) -> Fleet:
    return Fleet(World(tmp_path))


def decoded(probe: Probe, uid: str | None = None) -> list[Event]:
    envelopes = [Envelope.from_bytes(m.body) for m in probe.messages]
    return [DEFAULT_REGISTRY.decode(e) for e in envelopes if uid is None or e.updateid == uid]


async def wait_for(probe: Probe, done: Any, what: str, timeout: float = 60) -> list[Event]:
    deadline = asyncio.get_running_loop().time() + timeout
    while not done(decoded(probe)):
        assert asyncio.get_running_loop().time() < deadline, f"no {what} in {timeout}s: {decoded(probe)}"
        await asyncio.sleep(0.05)
    return decoded(probe)


def completions(events: list[Event]) -> list[UpdateCompleted]:
    return [e for e in events if isinstance(e, UpdateCompleted)]


def operator_event(event: Event, uid: str, sequence: int) -> Envelope:
    return make_envelope(event, source="hotupdate/cmdb", updateid=uid, project=PROJECT, area=AREA,
                         sequence=sequence)


def status_of(fleet: Fleet, uid: str) -> str:
    store = StateStore(fleet.world.state_url)
    try:
        record = store.tables.get(uid)
        assert record is not None
        return record.status
    finally:
        store.close()


def commands_run(fleet: Fleet) -> list[int]:
    return [fleet.commands_run(ip, Fleet.server(i)) for i, ip in enumerate(IPS, 1)]


@pytest.mark.parametrize("rollout,runs,not_run,outcome", [
    ({"batch_size": 3, "on_failure": "stop"}, [1, 1, 1, 1, 0, 1, 0, 0, 0, 0], IPS[6:], "stopped"),
    ({"batch_size": 3, "on_failure": "continue"}, [1, 1, 1, 1, 0, 1, 1, 1, 1, 1], [], "failed"),
    ({"batch_percent": 30, "on_failure": "stop"}, [1, 1, 1, 1, 0, 1, 0, 0, 0, 0], IPS[6:], "stopped"),
], ids=["stop", "continue", "percent-stop"])
async def test_failed_second_batch_on_the_bus(fleet, amqp_url, rollout, runs, not_run, outcome):
    fleet.fail(IPS[4], Fleet.server(5))
    env, _ = fleet.request(10, rollout=rollout)
    service = build_service(fleet.config(amqp_url), "om1")
    await service.start()
    try:
        async with Probe(amqp_url) as results, AsyncPublisher(amqp_url) as pub:
            await results.bind(*RESULTS)
            await pub.publish(env)
            events = await wait_for(results, completions, "completion")
    finally:
        await service.stop()

    assert commands_run(fleet) == runs
    (done,) = completions(events)
    assert (done.outcome, done.not_run, done.final_result) == (outcome, not_run, False)
    ran_batches = [IPS[0:3], IPS[3:6]] if outcome == "stopped" else [IPS[0:3], IPS[3:6], IPS[6:9], IPS[9:]]
    assert [b.ips for b in events if isinstance(b, BatchFinished)] == ran_batches


async def test_confirm_on_the_bus_holds_no_consumer_and_survives_a_restart(fleet, amqp_url):
    fleet.fail(IPS[4], Fleet.server(5))
    env, _ = fleet.request(10, rollout={"batch_size": 3, "on_failure": "confirm"})
    other, _ = fleet.request(2)  # another update, 127.0.0.1-2 again, for the same executor
    uid = env.updateid
    async with Probe(amqp_url) as results, AsyncPublisher(amqp_url) as pub:
        await results.bind(*RESULTS)
        first = build_service(fleet.config(amqp_url), "om1", prefetch=1)
        await first.start()
        try:
            await pub.publish(env)
            await wait_for(results, lambda ev: any(isinstance(e, BatchFinished) and e.next == "await_confirm"
                                                   for e in ev), "wait for a go-ahead")
            # With one message at a time, a second update only runs if the waiting one holds nothing.
            await pub.publish(other)
            await wait_for(results, lambda ev: completions(ev), "the other update's completion")
        finally:
            await first.stop()
        assert status_of(fleet, uid) == "waiting"  # not "interrupted": nothing was running
        assert commands_run(fleet)[6:] == [0, 0, 0, 0]

        await pub.publish(operator_event(BatchConfirmed(batch=3, confirmed_by="alice"), uid, sequence=40))
        second = build_service(fleet.config(amqp_url), "om1")
        await second.start()  # a new process gets the go-ahead
        try:
            events = await wait_for(results, lambda ev: len(completions(ev)) == 2, "completion after the go-ahead")
            await asyncio.sleep(0.5)
        finally:
            await second.stop()

    mine = decoded(results, uid)
    assert [(b.batch, b.next) for b in mine if isinstance(b, BatchFinished)] == [
        (1, "continue"), (2, "await_confirm"), (3, "continue"), (4, "done")]
    assert commands_run(fleet) == [2, 2, 1, 1, 0, 1, 1, 1, 1, 1]  # 1 and 2 ran the other update too
    assert len(completions(events)) == 2
    (done,) = completions(mine)
    assert (done.outcome, done.not_run, done.failed_count) == ("failed", [], 1)
    children = [Envelope.from_bytes(m.body) for m in results.messages]
    assert {c.causationid for c in children if c.updateid == uid} == {env.id}
    assert len({c.id for c in children}) == len(children)  # nothing published twice
    assert status_of(fleet, uid) == "finished"


async def test_abort_on_the_bus_finishes_running_commands_and_starts_nothing_more(fleet, amqp_url):
    env, _ = fleet.request(6, commands=["sleep:1.5"], rollout={"batch_size": 2})
    uid = env.updateid
    service = build_service(fleet.config(amqp_url), "om1")
    await service.start()
    try:
        async with Probe(amqp_url) as results, AsyncPublisher(amqp_url) as pub:
            await results.bind(*RESULTS)
            await pub.publish(env)
            while not any(s.kind == "erl" for s in fleet.log(IPS[0], Fleet.server(1))):
                await asyncio.sleep(0.05)
            await pub.publish(operator_event(UpdateAbortRequested(requested_by="alice", reason="wrong build"), uid,
                                             sequence=30))
            events = await wait_for(results, completions, "completion")
    finally:
        await service.stop()

    for i in (1, 2):  # the running batch finished its commands
        assert [(s.kind, s.phase) for s in fleet.log(IPS[i - 1], Fleet.server(i))][-2:] == [("erl", "start"),
                                                                                           ("erl", "end")]
    assert not any(fleet.touched(IPS[i - 1], Fleet.server(i)) for i in range(3, 7))
    (batch,) = [e for e in events if isinstance(e, BatchFinished)]
    assert (batch.batch, batch.next, batch.ok_count) == (1, "stop", 2)
    (done,) = completions(events)
    assert (done.outcome, done.not_run) == ("aborted", IPS[2:6])
    assert "已中止(alice: wrong build)" in done.final_data


async def test_v1_update_requested_on_the_bus_runs_as_one_batch(fleet, amqp_url):
    newest_env, event = fleet.request(4)
    v1 = UpdateRequestedV1.model_validate(event.model_dump(exclude={"rollout", "parent_id", "relation"}))
    env = envelope_of(v1, newest_env.updateid)  # what a producer still speaking v1 sends
    assert env.type == "hotupdate.update.requested.v1"
    service = build_service(fleet.config(amqp_url), "om1")
    await service.start()
    try:
        async with Probe(amqp_url) as results, AsyncPublisher(amqp_url) as pub:
            await results.bind(*RESULTS)
            await pub.publish(env)
            events = await wait_for(results, completions, "completion")
    finally:
        await service.stop()

    assert [fleet.commands_run(IPS[i - 1], Fleet.server(i)) for i in (1, 2, 3, 4)] == [1, 1, 1, 1]
    assert not any(isinstance(e, BatchFinished) for e in events)  # one batch, as the seed does
    assert sorted(type(e).__name__ for e in events) == sorted(
        ["UpdateStarted", "IpFinished", "IpFinished", "IpFinished", "IpFinished", "UpdateCompleted"])
    (done,) = completions(events)
    assert (done.outcome, done.final_result, done.not_run) == ("succeeded", True, [])
    assert all(Envelope.from_bytes(m.body).type != "hotupdate.update.completed.v1" for m in results.messages)


async def test_v2_update_requested_from_an_old_cmdb_rolls_out_as_before_and_is_answered_in_batch_finished_v2(
        fleet, amqp_url):
    fleet.fail(IPS[4], Fleet.server(5))
    newest_env, event = fleet.request(10, rollout={"batch_size": 3, "on_failure": "stop"})
    env = envelope_of(UpdateRequestedV2.model_validate(event_data(event), strict=True), newest_env.updateid)
    assert env.type == "hotupdate.update.requested.v2" and "analysis_timeout_seconds" not in env.data["rollout"]
    service = build_service(fleet.config(amqp_url), "om1")
    await service.start()
    try:
        async with Probe(amqp_url) as results, AsyncPublisher(amqp_url) as pub:
            await results.bind(*RESULTS)
            await pub.publish(env)
            events = await wait_for(results, completions, "completion")
    finally:
        await service.stop()

    assert commands_run(fleet) == [1, 1, 1, 1, 0, 1, 0, 0, 0, 0]  # as the v3 request in test_failed_second_batch
    assert [(b.batch, b.next, b.ips) for b in events if isinstance(b, BatchFinished)] == [
        (1, "continue", IPS[0:3]), (2, "stop", IPS[3:6])]
    (done,) = completions(events)
    assert (done.outcome, done.not_run, done.final_result) == ("stopped", IPS[6:], False)
    sent = [Envelope.from_bytes(m.body).type for m in results.messages]
    assert sent.count("hotupdate.batch.finished.v2") == 2 and "hotupdate.batch.finished.v1" not in sent
