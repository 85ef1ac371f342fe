"""Rolling batches, stop / continue / confirm after a failed batch, pauses and aborts, on real processes.

Ten "IPs" are directories on this machine; applying files and each Erlang command run a tiny
script that logs per game server (tests/fleet.py), so what ran where, and when, is counted
from real side effects. One test does the same against real Erlang nodes.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid

import pytest

from bus.contract.envelope import Envelope
from bus.contract.events import (
    BatchFinished,
    CdnDirFinished,
    Event,
    IpFinished,
    UpdateCompleted,
    UpdateRequested,
    UpdateStarted,
)
from consumers.ops_executor.executor import Executor
from consumers.ops_executor.state import StateStore
from demo.erlang import ErlangNodes, compile_module
from tests.fleet import Fleet
from tests.ops_world import envelope_of, hot_client_request
from tests.recording import RecordingEmitter

IPS = [Fleet.ip(i) for i in range(1, 11)]


@pytest.fixture
def fleet(world) -> Fleet:
    return Fleet(world)


class Emitters:
    """An ``emitter_for``: one recording emitter per parent envelope it is asked for."""

    def __init__(self) -> None:
        self.made: list[RecordingEmitter] = []

    def __call__(self, parent: Envelope) -> RecordingEmitter:
        self.made.append(RecordingEmitter(parent))
        return self.made[-1]

    @property
    def events(self) -> list[Event]:
        return [e for m in self.made for e in m.events]

    @property
    def envelopes(self) -> list[Envelope]:
        return [e for m in self.made for e in m.envelopes]


def by_id(emitter: RecordingEmitter) -> dict[str, Event]:
    return {env.id: event for env, event in zip(emitter.envelopes, emitter.events, strict=True)}


def batches(events: list[Event]) -> list[BatchFinished]:
    return [e for e in events if isinstance(e, BatchFinished)]


def finished_ips(events: list[Event]) -> list[str]:
    return [e.ip for e in events if isinstance(e, IpFinished)]


def completed(events: list[Event]) -> UpdateCompleted:
    done = events[-1]
    assert isinstance(done, UpdateCompleted), events
    return done


def status_of(store: StateStore, uid: str) -> str:
    record = store.tables.get(uid)
    assert record is not None
    return record.status


def fail_in_second_batch(fleet: Fleet) -> None:
    fleet.fail(IPS[4], Fleet.server(5))  # 127.0.0.5: batch 2 of [1-3] [4-6] [7-9] [10]


async def test_failed_batch_with_stop_never_touches_the_later_batches(fleet):
    fail_in_second_batch(fleet)
    env, event = fleet.request(10, rollout={"batch_size": 3, "on_failure": "stop"})
    emitter = RecordingEmitter(env)

    await fleet.executor().handle(env, event, emitter)

    assert [fleet.commands_run(ip, Fleet.server(i)) for i, ip in enumerate(IPS, 1)] == [1, 1, 1, 1, 0, 1, 0, 0, 0, 0]
    assert not any(fleet.touched(ip, Fleet.server(i)) for i, ip in enumerate(IPS, 1) if i > 6)  # not even files
    assert [(b.batch, b.batches, b.ips, b.ok_count, b.failed_count, b.next) for b in batches(emitter.events)] == [
        (1, 4, IPS[0:3], 3, 0, "continue"), (2, 4, IPS[3:6], 2, 1, "stop")]
    assert sorted(finished_ips(emitter.events)) == sorted(IPS[:6])
    done = completed(emitter.events)
    assert (done.outcome, done.final_result, done.not_run) == ("stopped", False, IPS[6:])
    assert (done.ok_count, done.failed_count) == (5, 1)
    assert "第2批失败, 已停止, 4个未执行" in done.final_data and "127.0.0.5/qq_5_1(erl失败)" in done.final_data
    # Each batch's BatchFinished comes after its IPs' results and before the next batch's.
    kinds = [type(e).__name__ for e in emitter.events]
    assert kinds[0] == "UpdateStarted" and kinds[4] == "BatchFinished" and kinds[8] == "BatchFinished"


async def test_failed_batch_with_continue_runs_every_batch(fleet):
    fail_in_second_batch(fleet)
    env, event = fleet.request(10, rollout={"batch_size": 3, "on_failure": "continue"})
    emitter = RecordingEmitter(env)

    await fleet.executor().handle(env, event, emitter)

    assert [fleet.commands_run(ip, Fleet.server(i)) for i, ip in enumerate(IPS, 1)] == [1, 1, 1, 1, 0, 1, 1, 1, 1, 1]
    assert [b.next for b in batches(emitter.events)] == ["continue", "continue", "continue", "done"]
    assert [b.ips for b in batches(emitter.events)] == [IPS[0:3], IPS[3:6], IPS[6:9], IPS[9:]]
    done = completed(emitter.events)
    assert (done.outcome, done.final_result, done.not_run, done.ok_count, done.failed_count) == (
        "failed", False, [], 9, 1)


async def test_batches_run_one_after_another_in_the_request_order(fleet):
    env, event = fleet.request(10, rollout={"batch_size": 3})
    await fleet.executor(fleet.config(concurrency=16)).handle(env, event, RecordingEmitter(env))

    spans = {ip: (min(s.at for s in fleet.log(ip, Fleet.server(i))), max(s.at for s in fleet.log(ip, Fleet.server(i))))
             for i, ip in enumerate(IPS, 1)}
    groups = [IPS[0:3], IPS[3:6], IPS[6:9], IPS[9:]]
    for earlier, later in itertools.pairwise(groups):
        assert max(spans[ip][1] for ip in earlier) <= min(spans[ip][0] for ip in later)


async def test_confirm_waits_after_the_failed_batch_across_a_restart_until_the_go_ahead(fleet, world):
    fail_in_second_batch(fleet)
    env, event = fleet.request(10, rollout={"batch_size": 3, "on_failure": "confirm"})
    uid = env.updateid
    first = RecordingEmitter(env)

    await asyncio.wait_for(fleet.executor().handle(env, event, first), 30)  # returns: nothing is held while waiting

    assert [b.next for b in batches(first.events)] == ["continue", "await_confirm"]
    assert not any(isinstance(e, UpdateCompleted) for e in first.events)
    assert not any(fleet.touched(ip, Fleet.server(i)) for i, ip in enumerate(IPS, 1) if i > 6)
    store = StateStore(world.state_url)
    assert status_of(store, uid) == "waiting"

    restarted = fleet.executor(store=store)  # a new process over the same state
    emitters = Emitters()
    assert await restarted.resume_unfinished(emitters) == []  # waiting is not resumed by itself
    await restarted.confirm(uid, 4, "alice", emitters)  # a go-ahead for another batch does nothing
    await asyncio.sleep(0.3)
    assert emitters.events == [] and status_of(store, uid) == "waiting"
    assert not any(fleet.touched(ip, Fleet.server(i)) for i, ip in enumerate(IPS, 1) if i > 6)

    await asyncio.wait_for(restarted.confirm(uid, 3, "alice", emitters), 30)

    assert [fleet.commands_run(ip, Fleet.server(i)) for i, ip in enumerate(IPS, 1)] == [1, 1, 1, 1, 0, 1, 1, 1, 1, 1]
    assert sorted(finished_ips(emitters.events)) == sorted(IPS[6:])
    assert [b.batch for b in batches(emitters.events)] == [3, 4]  # what was published before is not repeated
    done = completed(emitters.events)
    assert (done.outcome, done.not_run, done.ok_count, done.failed_count) == ("failed", [], 9, 1)
    assert status_of(store, uid) == "finished"
    # Still children of the request, numbered after the events published before the wait.
    assert {e.causationid for e in emitters.envelopes} == {env.id}
    assert min(e.sequence for e in emitters.envelopes) > max(e.sequence for e in first.envelopes)
    assert not {e.id for e in emitters.envelopes} & {e.id for e in first.envelopes}


async def test_percentage_batches_are_cut_from_the_ip_order(fleet):
    env, event = fleet.request(10, rollout={"batch_percent": 40})
    emitter = RecordingEmitter(env)

    await fleet.executor().handle(env, event, emitter)

    assert [b.ips for b in batches(emitter.events)] == [IPS[0:4], IPS[4:8], IPS[8:]]
    assert completed(emitter.events).outcome == "succeeded"


async def test_the_next_batch_starts_only_after_the_pause(fleet):
    env, event = fleet.request(4, rollout={"batch_size": 2, "pause_seconds": 1.0})

    await fleet.executor().handle(env, event, RecordingEmitter(env))

    first_end = max(s.at for i in (1, 2) for s in fleet.log(IPS[i - 1], Fleet.server(i)))
    second_start = min(s.at for i in (3, 4) for s in fleet.log(IPS[i - 1], Fleet.server(i)))
    assert second_start - first_end >= 1.0


async def test_abort_lets_started_servers_finish_and_starts_nothing_more(fleet):
    # Two IPs at a time, two servers each, one slow command per server: the abort comes
    # while the first server of IPs 1 and 2 runs.
    env, event = fleet.request(4, servers_per_ip=2, commands=["sleep:1.5"])
    executor = fleet.executor(fleet.config(concurrency=2))
    emitter = RecordingEmitter(env)
    running = asyncio.create_task(executor.handle(env, event, emitter))
    while not any(s.kind == "erl" for s in fleet.log(IPS[0], Fleet.server(1, 1))):
        await asyncio.sleep(0.05)

    aborted_at = time.time()
    await executor.abort(env.updateid, "alice", "bad build", Emitters())
    await asyncio.wait_for(running, 30)

    for i in (1, 2):  # started: its running server finished its command, the next one never started
        steps = fleet.log(IPS[i - 1], Fleet.server(i, 1))
        assert [(s.kind, s.phase) for s in steps] == [("apply", "start"), ("apply", "end"), ("erl", "start"),
                                                      ("erl", "end")]
        assert steps[0].at < aborted_at
        assert not fleet.touched(IPS[i - 1], Fleet.server(i, 2))
    assert not any(fleet.touched(IPS[i - 1], Fleet.server(i, n)) for i in (3, 4) for n in (1, 2))
    finished = {e.ip: e for e in emitter.events if isinstance(e, IpFinished)}
    assert sorted(finished) == IPS[:2]
    assert finished[IPS[0]].update_data[Fleet.server(1, 2)].model_dump() == {"data": "已中止,未执行", "status": False}
    assert finished[IPS[0]].erl_data[Fleet.server(1, 1)].status is True
    done = completed(emitter.events)
    assert (done.outcome, done.final_result, done.not_run, done.ok_count, done.failed_count) == (
        "aborted", False, IPS[2:4], 2, 2)
    assert "已中止(alice: bad build), 2个未执行: 127.0.0.3, 127.0.0.4" in done.final_data


async def test_abort_between_batches_ends_the_pause_and_runs_no_later_batch(fleet, world):
    env, event = fleet.request(4, rollout={"batch_size": 2, "pause_seconds": 60})
    executor = fleet.executor()
    emitter = RecordingEmitter(env)
    running = asyncio.create_task(executor.handle(env, event, emitter))
    while not batches(emitter.events):
        await asyncio.sleep(0.05)

    await executor.abort(env.updateid, "alice", "", Emitters())
    await asyncio.wait_for(running, 10)  # not 60s

    assert not fleet.touched(IPS[2], Fleet.server(3)) and not fleet.touched(IPS[3], Fleet.server(4))
    done = completed(emitter.events)
    assert (done.outcome, done.not_run) == ("aborted", IPS[2:4])
    assert status_of(StateStore(world.state_url), env.updateid) == "finished"


async def test_abort_of_an_update_waiting_for_a_go_ahead_completes_it_at_once(fleet, world):
    fail_in_second_batch(fleet)
    env, event = fleet.request(10, rollout={"batch_size": 3, "on_failure": "confirm"})
    first = RecordingEmitter(env)
    await fleet.executor().handle(env, event, first)
    emitters = Emitters()

    await asyncio.wait_for(fleet.executor().abort(env.updateid, "bob", "rolled back instead", emitters), 10)

    (done,) = emitters.events
    assert isinstance(done, UpdateCompleted)
    assert (done.outcome, done.not_run) == ("aborted", IPS[6:])
    assert not any(fleet.touched(ip, Fleet.server(i)) for i, ip in enumerate(IPS, 1) if i > 6)
    await fleet.executor().confirm(env.updateid, 3, "alice", emitters)  # too late: nothing happens
    assert len(emitters.events) == 1
    assert status_of(StateStore(world.state_url), env.updateid) == "finished"


async def test_abort_arriving_before_its_request_runs_nothing(fleet):
    env, event = fleet.request(3, rollout={"batch_size": 1})
    executor = fleet.executor()
    await executor.abort(env.updateid, "alice", "changed my mind", Emitters())
    emitter = RecordingEmitter(env)

    await executor.handle(env, event, emitter)

    assert not any(fleet.touched(IPS[i - 1], Fleet.server(i)) for i in (1, 2, 3))
    assert [type(e) for e in emitter.events] == [UpdateStarted, UpdateCompleted]
    done = completed(emitter.events)
    assert (done.outcome, done.not_run) == ("aborted", IPS[:3])


async def test_redelivered_requests_of_a_rolled_out_update_run_nothing_again(fleet):
    fail_in_second_batch(fleet)
    env, event = fleet.request(10, rollout={"batch_size": 3, "on_failure": "confirm"})
    first = RecordingEmitter(env)
    await fleet.executor().handle(env, event, first)

    waiting_again = RecordingEmitter(env)
    await fleet.executor().handle(env, event, waiting_again)  # redelivered while waiting
    assert by_id(waiting_again) == by_id(first)  # the same events with the same ids, nothing run
    assert [type(e) for e in waiting_again.events] == [type(e) for e in first.events]

    emitters = Emitters()
    await fleet.executor().confirm(env.updateid, 3, "alice", emitters)
    replayed = RecordingEmitter(env)
    await fleet.executor().handle(env, event, replayed)  # redelivered after it finished

    assert [fleet.commands_run(ip, Fleet.server(i)) for i, ip in enumerate(IPS, 1)] == [1, 1, 1, 1, 0, 1, 1, 1, 1, 1]
    assert sorted(e.id for e in replayed.envelopes) == sorted(e.id for e in [*first.envelopes, *emitters.envelopes])
    assert [b.next for b in batches(replayed.events)] == ["continue", "await_confirm", "continue", "done"]
    assert replayed.events[-1] == emitters.events[-1]


async def test_interrupted_during_a_pause_resumes_with_the_next_batch_only(fleet, world):
    env, event = fleet.request(4, rollout={"batch_size": 2, "pause_seconds": 1.5})
    store = StateStore(world.state_url)
    executor = fleet.executor(store=store)
    first = RecordingEmitter(env)
    running = asyncio.create_task(executor.handle(env, event, first))
    while not batches(first.events):
        await asyncio.sleep(0.05)
    await executor.interrupt()  # SIGTERM during the pause
    with pytest.raises(Exception, match="interrupted"):
        await running
    assert status_of(store, env.updateid) == "interrupted"

    emitters = Emitters()
    await asyncio.gather(*await fleet.executor(store=store).resume_unfinished(emitters))

    assert [fleet.commands_run(IPS[i - 1], Fleet.server(i)) for i in (1, 2, 3, 4)] == [1, 1, 1, 1]
    first_end = max(s.at for i in (1, 2) for s in fleet.log(IPS[i - 1], Fleet.server(i)))
    second_start = min(s.at for i in (3, 4) for s in fleet.log(IPS[i - 1], Fleet.server(i)))
    assert second_start - first_end >= 1.5  # the pause is kept, counted from the batch's end
    assert [b.batch for b in batches(emitters.events)] == [1, 2]
    assert completed(emitters.events).outcome == "succeeded"


async def test_hot_client_rolls_out_over_cdn_dirs_and_stops_after_a_failed_batch(world):
    root_url = "res.ssss.chuangyunet.com"
    (world.cdn_root / root_url).mkdir(parents=True)
    (world.cdn_root / root_url / "d2").write_text("a file where the dir should be")  # d2 cannot be written
    uid = str(uuid.uuid4())
    dirs = [(root_url, f"d{i}") for i in range(1, 6)]
    _, plain = hot_client_request(world, uid, world.push(uid, {"a.txt": b"v2"}), dirs)
    event = UpdateRequested.model_validate({**plain.model_dump(), "rollout": {"batch_size": 2, "on_failure": "stop"}})
    env = envelope_of(event, uid)
    config = world.config()
    executor = Executor(ops_manager="om1", config=config.ops_managers["om1"], store=StateStore(world.state_url),
                        projects=config.projects)
    emitter = RecordingEmitter(env)

    await executor.handle(env, event, emitter)

    assert (world.cdn_root / root_url / "d1" / "a.txt").read_bytes() == b"v2"
    assert not any((world.cdn_root / root_url / d).exists() for d in ("d3", "d4", "d5"))
    assert sorted(e.cdn_dir for e in emitter.events if isinstance(e, CdnDirFinished)) == ["d1", "d2"]
    (batch,) = batches(emitter.events)
    assert [t.cdn_dir for t in batch.cdn_dirs] == ["d1", "d2"] and batch.next == "stop" and batch.ips == []
    done = completed(emitter.events)
    assert done.outcome == "stopped"
    assert done.not_run == [f"{root_url}/d3", f"{root_url}/d4", f"{root_url}/d5"]
    assert [d["cdn_dir"] for d in done.data] == ["d1", "d2"]


@pytest.mark.erlang
async def test_batched_update_on_real_erlang_nodes_stops_before_the_node_after_a_failure(world):
    nodes = ErlangNodes(world.cookie)
    try:
        names = []
        for i, base in enumerate(["qq_1", "qq_2", "qq_3"], 1):
            name = world.name(base)
            root = world.server_dir(Fleet.ip(i), name)
            compile_module(world.module, 1, root / "ebin")
            if i != 2:  # the second IP's node is down: its command fails
                nodes.start(name, root, root / "ebin")
            names.append(name)
        uid = str(uuid.uuid4())
        beam = compile_module(world.module, 2, world.root / "build_v2")
        files = world.push(uid, {beam.name: beam.read_bytes()})
        event = UpdateRequested.model_validate({
            "update_type": "hot_server", "version": "004200000", "ops_manager": "om1", "update_file_list": files,
            "requested_by": "tester", "erlang_cmd_list": [f"c:l({world.module})", f"{world.module}:bump()"],
            "update_server_list": {"game": {Fleet.ip(i): [n] for i, n in enumerate(names, 1)}},
            "rollout": {"batch_size": 1, "on_failure": "stop"},
        })
        env = envelope_of(event, uid)
        world.allow(event.update_server_list or {})
        config = world.config()
        executor = Executor(ops_manager="om1", config=config.ops_managers["om1"],
                            store=StateStore(world.state_url), projects=config.projects)
        emitter = RecordingEmitter(env)

        await executor.handle(env, event, emitter)

        assert nodes.apply(names[0], world.module, "version") == "2"
        assert nodes.apply(names[2], world.module, "version") == "1"  # never touched
        assert not (world.server_dir(Fleet.ip(3), names[2]) / "runs").exists()
        assert [b.next for b in batches(emitter.events)] == ["continue", "stop"]
        done = completed(emitter.events)
        assert (done.outcome, done.not_run) == ("stopped", [Fleet.ip(3)])
    finally:
        assert not nodes.stop_all(), "beam processes survived the test"
