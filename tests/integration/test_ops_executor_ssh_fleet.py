"""The ssh runner against a real OpenSSH server listening on many loopback addresses, each a game host.

One login per host per update (counted in sshd's own log), files installed atomically, and the
failures an operator meets named per host while the other hosts go on: a host that is not there,
a connection cut in the middle of a command, a command that hangs past its timeout.

Servers without an Erlang node get their "Erlang command" from a hook script in their directory
(``erl_cmd: sh {server_root}/erl_hook.sh``), so a test decides what the command does on the host.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from bus.contract.events import IpFinished
from consumers.ops_executor.runner import INTERRUPTED_UNKNOWN, StagedFile
from consumers.ops_executor.ssh_runner import STAGING_ROOT, SshRunner
from demo.erlang import process_alive
from domain.config import HotupdateConfig, RunnerConfig
from tests import sshd
from tests.integration.test_ops_executor import by_type, completed, executor_for, push_v2, runs, server, version_of
from tests.ops_world import World, hot_server_request
from tests.recording import RecordingEmitter

pytestmark = [pytest.mark.ssh,
              pytest.mark.skipif(not sshd.available(), reason="needs openssh-server (scripts/setup.sh installs it)")]

HOSTS = sshd.hosts(6)
ABSENT = "127.0.0.7"  # no sshd listens there: connection refused
OK_HOOK = "cat >/dev/null; echo ok\n"


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[sshd.Sshd]:
    daemon = sshd.start(tmp_path / "sshd", HOSTS)
    yield daemon
    daemon.stop()


def fleet_config(world: World, daemon: sshd.Sshd, *, hooks: bool = False, **ops: object) -> HotupdateConfig:
    runner: dict[str, object] = {
        "kind": "ssh", "ssh_user": daemon.user, "ssh_port": daemon.port, "ssh_key": str(daemon.client_key),
        "ssh_known_hosts": str(daemon.known_hosts), "ssh_connect_timeout_seconds": 5,
        "server_root": str(world.root / "hosts" / "{ip}" / "{server}"),
    }
    if hooks:
        runner["erl_cmd"] = ["sh", "{server_root}/erl_hook.sh"]
    return world.config(runner=runner, **ops)


def hooked(world: World, ip: str, base: str, hook: str = OK_HOOK) -> str:
    """A server with an ebin and an "Erlang command" that runs ``hook`` (sh) on its host."""
    name = world.name(base)
    root = world.server_dir(ip, name)
    (root / "ebin").mkdir(parents=True)
    (root / "erl_hook.sh").write_text(hook)
    return name


def staging_left(daemon: sshd.Sshd) -> list[str]:
    root = daemon.home / STAGING_ROOT
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


@pytest.mark.erlang
async def test_each_host_is_logged_in_once_per_update_and_every_node_loads_the_new_beam(world, nodes, fleet):
    fleet.give_cookie(world.cookie)  # the game hosts' own ~/.erlang.cookie of the ssh user
    a, b, c = HOSTS[:3]
    s1, s2 = server(world, nodes, a, "qq_1"), server(world, nodes, a, "qq_2")
    s3, s4 = server(world, nodes, b, "qq_3"), server(world, nodes, c, "cross_1")
    pids_before = dict(nodes.pids)
    uid = str(uuid.uuid4())
    env, event = hot_server_request(world, uid, push_v2(world, uid),
                                    {"game": {a: [s1, s2], b: [s3]}, "cross": {c: [s4]}},
                                    [f"c:l({world.module})", f"{world.module}:bump()"])
    emitter = RecordingEmitter(env)

    await executor_for(world, fleet_config(world, fleet)).handle(env, event, emitter)

    assert {version_of(nodes, world, s) for s in (s1, s2, s3, s4)} == {"2"}
    assert dict(nodes.pids) == pids_before  # loaded hot, not restarted
    assert [runs(world, a, s1), runs(world, a, s2), runs(world, b, s3), runs(world, c, s4)] == [1, 1, 1, 1]
    assert fleet.logins() == {a: 1, b: 1, c: 1}  # one SSH login per host for upload, installs and erl_calls
    assert staging_left(fleet) == []  # the update's staging directories are gone
    assert not list((world.server_dir(a, s1) / "ebin").glob(".*hotupdate-tmp"))
    done = completed(emitter)
    assert (done.final_result, done.ok_count, done.failed_count) == (True, 4, 0)


async def test_a_host_nobody_answers_on_fails_with_its_reason_and_the_others_go_on(world, fleet):
    good = hooked(world, HOSTS[0], "qq_1")
    gone_1, gone_2 = hooked(world, ABSENT, "qq_2"), hooked(world, ABSENT, "qq_3")
    uid = str(uuid.uuid4())
    env, event = hot_server_request(world, uid, world.push(uid, {"m.beam": b"v2"}),
                                    {"game": {HOSTS[0]: [good], ABSENT: [gone_1, gone_2]}}, ["c:l(m)"])
    emitter = RecordingEmitter(env)

    await executor_for(world, fleet_config(world, fleet, hooks=True)).handle(env, event, emitter)

    finished = {e.ip: e for e in by_type(emitter, IpFinished)}
    assert finished[HOSTS[0]].update_data[good].status and finished[HOSTS[0]].erl_data[good].status
    assert (world.server_dir(HOSTS[0], good) / "ebin" / "m.beam").read_bytes() == b"v2"
    for name in (gone_1, gone_2):
        data = finished[ABSENT].update_data[name].data
        assert data.startswith("更新失败,不执行erl命令: ") and f"@{ABSENT}:{fleet.port}: unreachable" in data, data
        assert "refused" in data.lower()
    assert fleet.logins() == {HOSTS[0]: 1}  # the absent host was tried once, not once per server
    assert (completed(emitter).ok_count, completed(emitter).failed_count) == (1, 2)


async def test_a_connection_cut_mid_command_reports_that_command_unknown_and_reconnects_for_the_next(world, fleet):
    cut_host, other = HOSTS[1], HOSTS[2]
    marker = world.root / "cut.pid"
    ran = world.root / "cut.ran"
    cut = hooked(world, cut_host, "qq_1", f"cat >/dev/null; echo x >> {ran}; echo $$ > {marker}; exec sleep 60\n")
    after = hooked(world, cut_host, "qq_2")
    elsewhere = hooked(world, other, "qq_3")
    uid = str(uuid.uuid4())
    env, event = hot_server_request(world, uid, world.push(uid, {"m.beam": b"v2"}),
                                    {"game": {cut_host: [cut, after], other: [elsewhere]}}, ["c:l(m)"])
    emitter = RecordingEmitter(env)

    async def drop_the_connection() -> None:
        while not marker.exists() or not marker.read_text().strip():
            await asyncio.sleep(0.05)
        os.kill(sshd.session_process(int(marker.read_text())), signal.SIGKILL)

    dropper = asyncio.create_task(drop_the_connection())
    await executor_for(world, fleet_config(world, fleet, hooks=True)).handle(env, event, emitter)
    await dropper

    finished = {e.ip: e for e in by_type(emitter, IpFinished)}
    interrupted = finished[cut_host].erl_data[cut]
    assert interrupted.status is False and INTERRUPTED_UNKNOWN in interrupted.data, interrupted
    assert finished[cut_host].update_data[cut].status  # its files had landed before the cut
    assert ran.read_text() == "x\n"  # never run again
    assert finished[cut_host].update_data[after].status and finished[cut_host].erl_data[after].status
    assert finished[other].erl_data[elsewhere].status
    assert fleet.logins() == {cut_host: 2, other: 1}  # re-opened once for the commands not yet started
    assert staging_left(fleet) == []
    assert (completed(emitter).ok_count, completed(emitter).failed_count) == (2, 1)


async def test_a_command_past_its_timeout_is_killed_on_the_host_and_the_next_server_runs(world, fleet):
    host = HOSTS[3]
    marker = world.root / "hang.pid"
    hangs = hooked(world, host, "qq_1", f"cat >/dev/null; echo $$ > {marker}; exec sleep 60\n")
    after = hooked(world, host, "qq_2")
    uid = str(uuid.uuid4())
    env, event = hot_server_request(world, uid, world.push(uid, {"m.beam": b"v2"}),
                                    {"game": {host: [hangs, after]}}, ["c:l(m)"])
    emitter = RecordingEmitter(env)

    config = fleet_config(world, fleet, hooks=True, command_timeout_seconds=2)
    await executor_for(world, config).handle(env, event, emitter)

    finished = by_type(emitter, IpFinished)[0]
    assert finished.erl_data[hangs].model_dump() == {"data": "c:l(m): timeout after 2s", "status": False}
    assert finished.erl_data[after].status  # same connection, next channel
    sleeper = int(marker.read_text())
    for _ in range(100):
        if not process_alive(sleeper):
            break
        await asyncio.sleep(0.05)
    assert not process_alive(sleeper)  # killed on the host, not left running
    assert fleet.logins() == {host: 1}


async def test_a_reader_racing_the_updates_never_sees_a_partial_file(fleet, tmp_path):
    size = 4 * 1024 * 1024
    versions = []
    for letter in b"AB":
        src = tmp_path / f"src_{chr(letter)}"
        src.mkdir()
        (src / "m.beam").write_bytes(bytes([letter]) * size)
        versions.append(StagedFile(src / "m.beam", "m.beam"))
    dest = tmp_path / "server" / "ebin"
    dest.mkdir(parents=True)
    target = dest / "m.beam"
    stop = threading.Event()
    seen: list[int] = []
    partial: list[int] = []

    def read_constantly() -> None:
        while not stop.is_set():
            try:
                data = target.read_bytes()
            except FileNotFoundError:
                continue
            seen.append(data[0])
            if len(data) != size or data.count(data[:1]) != size:
                partial.append(len(data))

    reader = threading.Thread(target=read_constantly)
    reader.start()
    runner = SshRunner(RunnerConfig(kind="ssh", ssh_user=fleet.user, ssh_port=fleet.port,
                                    ssh_key=fleet.client_key, ssh_known_hosts=fleet.known_hosts))
    try:
        for round_ in range(6):
            async with runner.session(HOSTS[4], f"round-{round_}") as host:
                result = await host.put_files([versions[round_ % 2]], str(dest), timeout=60)
            assert result.ok, result.describe()
    finally:
        stop.set()
        reader.join()

    assert partial == []
    assert set(seen) == {ord("A"), ord("B")}  # the reader saw both versions, each whole
    assert sorted(p.name for p in dest.iterdir()) == ["m.beam"]  # no temporary file left beside it
    assert target.read_bytes()[:1] == b"B"
    assert runner.connections_opened[HOSTS[4]] == 6 and staging_left(fleet) == []
