"""ops_executor hot_server against real Erlang nodes: a .beam delivered and loaded with no restart.

Each "IP" is a directory (the local runner); each game server a detached Erlang node started
with its ebin on the code path, running a module compiled here that answers version 1.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import TypeVar

import pytest

from bus.contract.events import Event, IpFinished, UpdateCompleted, UpdateRequested, UpdateStarted
from consumers.ops_executor.executor import Executor, UpdateInterrupted
from consumers.ops_executor.state import StateStore
from demo.erlang import ErlangNodes, compile_module, process_alive
from domain.config import HotupdateConfig
from tests.ops_world import OPS, PROJECT, World, envelope_of, hot_server_request
from tests.recording import RecordingEmitter

pytestmark = [pytest.mark.erlang]

IP_A, IP_B = "127.0.0.1", "127.0.0.2"
E = TypeVar("E", bound=Event)
SLOW_IF_MARKED = 'case filelib:is_file("slow") of true -> timer:sleep(infinity); false -> ok end'


def server(world: World, nodes: ErlangNodes, ip: str, base: str, *, start: bool = True) -> str:
    """A game server at version 1: its ebin holds the v1 module; its node runs unless ``start`` is False."""
    name = world.name(base)
    root = world.server_dir(ip, name)
    (root / "ebin").mkdir(parents=True)
    compile_module(world.module, 1, root / "ebin")
    if start:
        nodes.start(name, root, root / "ebin")
    return name


def push_v2(world: World, update_id: str):
    beam = compile_module(world.module, 2, world.root / "build_v2")
    return world.push(update_id, {beam.name: beam.read_bytes()})


def executor_for(world: World, config: HotupdateConfig | None = None, store: StateStore | None = None) -> Executor:
    config = config or world.config()
    return Executor(
        ops_manager=OPS, config=config.ops_managers[OPS], store=store or StateStore(world.state_url),
        projects=config.projects,
    )


def version_of(nodes: ErlangNodes, world: World, name: str) -> str:
    return nodes.apply(name, world.module, "version")


def runs(world: World, ip: str, name: str) -> int:
    counter = world.server_dir(ip, name) / "runs"
    return len(counter.read_bytes()) if counter.exists() else 0


def by_type(emitter: RecordingEmitter, kind: type[E]) -> list[E]:
    return [e for e in emitter.events if isinstance(e, kind)]


def completed(emitter: RecordingEmitter) -> UpdateCompleted:
    """The last event, which must be the update's completion."""
    done = emitter.events[-1]
    assert isinstance(done, UpdateCompleted), emitter.events
    return done


def status_of(store: StateStore, uid: str) -> str:
    record = store.tables.get(uid)
    assert record is not None
    return record.status


def erl_call_running(marker: str) -> bool:
    """Whether an erl_call process addressing a node whose name contains ``marker`` is alive."""
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if cmdline and cmdline[0].endswith(b"erl_call") and any(marker.encode() in a for a in cmdline) \
                    and process_alive(int(proc.name)):
                return True
    return False


async def test_update_loads_new_beam_on_every_running_node_without_restart(world, nodes):
    s1, s2 = server(world, nodes, IP_A, "qq_1"), server(world, nodes, IP_A, "qq_2")
    s3 = server(world, nodes, IP_B, "cross_1")
    pids_before = dict(nodes.pids)
    assert {version_of(nodes, world, s) for s in (s1, s2, s3)} == {"1"}
    uid = str(uuid.uuid4())
    env, event = hot_server_request(world, uid, push_v2(world, uid), {"game": {IP_A: [s1, s2]}, "cross": {IP_B: [s3]}},
                                    [f"c:l({world.module})", f"{world.module}:bump()"])
    emitter = RecordingEmitter(env)

    await executor_for(world).handle(env, event, emitter)

    assert {version_of(nodes, world, s) for s in (s1, s2, s3)} == {"2"}
    assert dict(nodes.pids) == pids_before  # the same OS processes: loaded hot, not restarted
    assert [runs(world, IP_A, s1), runs(world, IP_A, s2), runs(world, IP_B, s3)] == [1, 1, 1]
    assert isinstance(emitter.events[0], UpdateStarted) and emitter.events[0].ips == [IP_A, IP_B]
    finished = {e.ip: e for e in by_type(emitter, IpFinished)}
    assert set(finished) == {IP_A, IP_B}
    assert finished[IP_A].group == "game" and finished[IP_B].group == "cross"
    assert all(r.status for e in finished.values() for r in [*e.update_data.values(), *e.erl_data.values()])
    assert f"{{module,{world.module}}}" in finished[IP_A].erl_data[s1].data.replace(" ", "")
    done = completed(emitter)
    assert (done.final_result, done.final_data, done.ok_count, done.failed_count) == (True, "全部完成", 3, 0)
    assert emitter.envelopes[1].id != emitter.envelopes[2].id  # one IP-finished event per IP, told apart by key


async def test_node_down_fails_only_its_erl_command(world, nodes):
    up = server(world, nodes, IP_A, "qq_1")
    down = server(world, nodes, IP_B, "qq_2", start=False)
    uid = str(uuid.uuid4())
    env, event = hot_server_request(world, uid, push_v2(world, uid), {"game": {IP_A: [up], IP_B: [down]}},
                                    [f"c:l({world.module})"])
    emitter = RecordingEmitter(env)

    await executor_for(world).handle(env, event, emitter)

    finished = {e.ip: e for e in by_type(emitter, IpFinished)}
    assert finished[IP_A].erl_data[up].status is True
    assert version_of(nodes, world, up) == "2"
    assert finished[IP_B].update_data[down].status is True  # the files did land
    assert finished[IP_B].erl_data[down].status is False
    assert "failed to connect" in finished[IP_B].erl_data[down].data
    done = completed(emitter)
    assert done.final_result is False and (done.ok_count, done.failed_count) == (1, 1)
    assert down in done.final_data and up not in done.final_data


async def test_apply_failure_runs_no_erl_command_on_that_server(world, nodes):
    good = server(world, nodes, IP_A, "qq_1")
    bad = server(world, nodes, IP_A, "qq_2")
    ebin = world.server_dir(IP_A, bad) / "ebin"
    for f in ebin.iterdir():
        f.unlink()
    ebin.rmdir()
    ebin.write_text("a regular file where the code directory should be")  # root ignores chmod; this it can't
    uid = str(uuid.uuid4())
    env, event = hot_server_request(world, uid, push_v2(world, uid), {"game": {IP_A: [good, bad]}},
                                    [f"c:l({world.module})", f"{world.module}:bump()"])
    emitter = RecordingEmitter(env)

    await executor_for(world).handle(env, event, emitter)

    (finished,) = by_type(emitter, IpFinished)
    # The seed's text exactly in erl_data; in update_data, that text and then why (events.md).
    assert finished.erl_data[bad].model_dump() == {"data": "更新失败,不执行erl命令", "status": False}
    assert finished.update_data[bad].status is False
    seed_text, why = finished.update_data[bad].data.split(": ", 1)
    assert seed_text == "更新失败,不执行erl命令" and "ebin" in why
    assert runs(world, IP_A, bad) == 0  # not one Erlang command reached it
    assert finished.erl_data[good].status is True and runs(world, IP_A, good) == 1
    assert completed(emitter).final_result is False


async def test_hanging_command_is_killed_and_recorded_as_timeout(world, nodes):
    name = server(world, nodes, IP_A, "qq_1")
    uid = str(uuid.uuid4())
    env, event = hot_server_request(world, uid, push_v2(world, uid), {"game": {IP_A: [name]}},
                                    ["timer:sleep(infinity)", f"{world.module}:bump()"])
    emitter = RecordingEmitter(env)
    executor = executor_for(world, world.config(command_timeout_seconds=2))

    await asyncio.wait_for(executor.handle(env, event, emitter), 30)

    (finished,) = by_type(emitter, IpFinished)
    assert finished.erl_data[name].status is False
    assert "timeout after 2s" in finished.erl_data[name].data
    assert runs(world, IP_A, name) == 0  # the commands after the hung one were not run
    assert not erl_call_running(name)  # the hung erl_call was killed, not left behind
    assert completed(emitter).final_result is False


async def test_server_name_with_shell_metacharacters_is_refused_and_nothing_runs(world, nodes):
    name = server(world, nodes, IP_A, "qq_1")
    marker = world.root / "pwned"
    evil = f"qq_2;touch${{IFS}}{marker}"
    uid = str(uuid.uuid4())
    files = push_v2(world, uid)
    raw = {"update_type": "hot_server", "version": "004200000", "ops_manager": OPS, "update_file_list": files,
           "requested_by": "tester", "update_server_list": {"game": {IP_A: [name, evil]}},
           "erlang_cmd_list": [f"{world.module}:bump()"]}
    with pytest.raises(ValueError, match="not a valid name"):
        UpdateRequested.model_validate(raw)  # the bus refuses it when decoding (parked, see the service test)
    # Built around validation, the executor still refuses it before running anything.
    event = UpdateRequested.model_construct(**{**raw, "update_file_list": files, "data": None, "client_type": None})
    env = envelope_of(hot_server_request(world, uid, files, {"game": {IP_A: [name]}}, [])[1], uid)
    emitter = RecordingEmitter(env)

    await executor_for(world).handle(env, event, emitter)

    (done,) = emitter.events
    assert isinstance(done, UpdateCompleted) and done.final_result is False
    assert done.final_data.startswith("拒绝执行")
    assert not marker.exists()
    assert runs(world, IP_A, name) == 0 and version_of(nodes, world, name) == "1"
    again = RecordingEmitter(env)
    await executor_for(world).handle(env, event, again)  # asked again: the same refusal, still nothing run
    assert [e.id for e in again.envelopes] == [e.id for e in emitter.envelopes]
    assert not marker.exists()


async def test_redelivered_request_is_answered_from_the_record_without_running_again(world, nodes):
    s1, s2 = server(world, nodes, IP_A, "qq_1"), server(world, nodes, IP_B, "qq_2")
    uid = str(uuid.uuid4())
    env, event = hot_server_request(world, uid, push_v2(world, uid), {"game": {IP_A: [s1], IP_B: [s2]}},
                                    [f"c:l({world.module})", f"{world.module}:bump()"])
    first = RecordingEmitter(env)
    await executor_for(world).handle(env, event, first)
    beam = world.server_dir(IP_A, s1) / "ebin" / f"{world.module}.beam"
    inode = beam.stat().st_ino

    again = RecordingEmitter(env)
    # A fresh executor over the same state: as after a restart, when the broker redelivers.
    await executor_for(world).handle(env, event, again)

    assert runs(world, IP_A, s1) == 1 and runs(world, IP_B, s2) == 1  # no command ran twice
    assert beam.stat().st_ino == inode  # and the files were not applied again
    assert sorted(e.id for e in again.envelopes) == sorted(e.id for e in first.envelopes)
    assert [type(e) for e in again.events] == [UpdateStarted, IpFinished, IpFinished, UpdateCompleted]
    assert again.events[-1] == first.events[-1]


async def test_concurrent_redelivery_waits_for_the_running_update_instead_of_starting_another(world, nodes):
    name = server(world, nodes, IP_A, "qq_1")
    uid = str(uuid.uuid4())
    env, event = hot_server_request(world, uid, push_v2(world, uid), {"game": {IP_A: [name]}},
                                    ["timer:sleep(1500)", f"{world.module}:bump()"])
    executor = executor_for(world)
    first, second = RecordingEmitter(env), RecordingEmitter(env)

    await asyncio.gather(executor.handle(env, event, first), executor.handle(env, event, second))

    assert runs(world, IP_A, name) == 1
    assert [e.id for e in second.envelopes] == [e.id for e in first.envelopes]


async def test_interrupted_update_is_finished_without_running_any_server_twice(world, nodes):
    # The slow server was cut off in the middle of its commands: what ran there is unknown, so
    # it is reported as interrupted instead of being run again (retry-failed re-runs it on purpose).
    fast = server(world, nodes, IP_A, "qq_1")
    slow = server(world, nodes, IP_B, "qq_2")
    (world.server_dir(IP_B, slow) / "slow").write_text("hang until this file is gone")
    uid = str(uuid.uuid4())
    env, event = hot_server_request(world, uid, push_v2(world, uid), {"game": {IP_A: [fast], IP_B: [slow]}},
                                    [f"c:l({world.module})", SLOW_IF_MARKED, f"{world.module}:bump()"])
    store = StateStore(world.state_url)
    executor = executor_for(world, store=store)
    running = asyncio.create_task(executor.handle(env, event, RecordingEmitter(env)))
    for _ in range(200):
        if store.tables.server_results(uid):
            break
        await asyncio.sleep(0.1)
    assert list(store.tables.server_results(uid)) == [("game", IP_A, fast)]

    await executor.interrupt()  # what SIGTERM does
    with pytest.raises(UpdateInterrupted):
        await running
    assert status_of(store, uid) == "interrupted"
    assert not erl_call_running(slow)

    (world.server_dir(IP_B, slow) / "slow").unlink()
    restarted = executor_for(world)
    emitters: list[RecordingEmitter] = []

    def emitter_for(parent):
        emitters.append(RecordingEmitter(parent))
        return emitters[-1]

    await asyncio.gather(*await restarted.resume_unfinished(emitter_for))

    assert runs(world, IP_A, fast) == 1 and runs(world, IP_B, slow) == 0  # nothing ran twice
    (resumed,) = emitters
    assert completed(resumed).final_result is False
    assert status_of(store, uid) == "finished"
    ip_events = {e.ip: e for e in by_type(resumed, IpFinished)}
    assert ip_events[IP_B].erl_data[slow].data == "执行中断, 结果未知, 未重新执行"
    assert ip_events[IP_A].erl_data[fast].status is True


async def test_update_given_up_after_too_many_takeovers_fails_explicitly(world, nodes):
    name = server(world, nodes, IP_A, "qq_1")
    uid = str(uuid.uuid4())
    env, event = hot_server_request(world, uid, push_v2(world, uid), {"game": {IP_A: [name]}},
                                    [f"{world.module}:bump()"])
    store = StateStore(world.state_url)
    for _ in range(3):  # three executors each died while running it
        store.tables.claim(update_id=uid, project=PROJECT, area="cn", update_type="hot_server", version=event.version,
                    request=env.model_dump_json())
    emitter = RecordingEmitter(env)

    await executor_for(world, store=store).handle(env, event, emitter)

    (finished,) = by_type(emitter, IpFinished)
    assert finished.update_data[name].model_dump() == {"data": "更新失败,不执行erl命令: 中断3次, 放弃执行",
                                                       "status": False}
    assert finished.erl_data[name].model_dump() == {"data": "更新失败,不执行erl命令", "status": False}
    assert runs(world, IP_A, name) == 0
    assert completed(emitter).final_result is False and status_of(store, uid) == "finished"


async def test_ip_deadline_stops_its_remaining_servers_and_records_why(world, nodes):
    hung, after = server(world, nodes, IP_A, "qq_1"), server(world, nodes, IP_A, "qq_2")
    (world.server_dir(IP_A, hung) / "slow").write_text("hang")
    uid = str(uuid.uuid4())
    env, event = hot_server_request(world, uid, push_v2(world, uid), {"game": {IP_A: [hung, after]}},
                                    [SLOW_IF_MARKED, f"{world.module}:bump()"])
    emitter = RecordingEmitter(env)
    executor = executor_for(world, world.config(ip_timeout_seconds=2, command_timeout_seconds=60))

    await asyncio.wait_for(executor.handle(env, event, emitter), 30)

    (finished,) = by_type(emitter, IpFinished)
    assert finished.update_data[hung].status is True  # its files landed before the deadline
    assert finished.erl_data[hung].model_dump() == {"data": "timeout after 2s (IP)", "status": False}
    assert finished.update_data[after].model_dump() == {"data": "更新失败,不执行erl命令: timeout after 2s (IP)",
                                                        "status": False}
    assert finished.erl_data[after].data == "更新失败,不执行erl命令"
    assert runs(world, IP_A, after) == 0  # the IP's time was up before its turn
    assert not erl_call_running(hung)
    assert completed(emitter).failed_count == 2


async def test_configured_apply_command_runs_on_the_ops_manager_with_separate_arguments(world):
    name = world.name("qq_1")
    ebin = world.server_dir(IP_A, name) / "ebin"
    ebin.mkdir(parents=True)
    uid = str(uuid.uuid4())
    files = world.push(uid, {"a b.beam": b"with a space", "sub/c.beam": b"nested"})
    env, event = hot_server_request(world, uid, files, {"game": {IP_A: [name]}}, [])
    config = world.config(runner={"kind": "local", "server_root": str(world.root / "hosts" / "{ip}" / "{server}"),
                                  "apply_cmd": ["cp", "-R", "{staged_dir}/.", "{dest_dir}"]})
    emitter = RecordingEmitter(env)

    await executor_for(world, config).handle(env, event, emitter)

    (finished,) = by_type(emitter, IpFinished)
    assert finished.update_data[name].status and finished.erl_data[name].data == "无erl命令"
    assert (ebin / "a b.beam").read_bytes() == b"with a space" and (ebin / "sub" / "c.beam").read_bytes() == b"nested"
    assert completed(emitter).final_result is True
