"""ops_executor's ssh runner against a real OpenSSH server: files go over ssh as a tar stream and
erl_call runs on the far side, hot-loading real Erlang nodes.

The two "game hosts" 127.0.0.1 and 127.0.0.2 are this machine behind one sshd on loopback
(tests/sshd.py), with a pinned host key (known_hosts) and a key-only login.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from bus.contract.events import IpFinished
from consumers.ops_executor.ssh_runner import SshRunner
from domain.config import HotupdateConfig, RunnerConfig
from tests import sshd
from tests.integration.test_ops_executor import (
    by_type,
    completed,
    executor_for,
    push_v2,
    runs,
    server,
    version_of,
)
from tests.ops_world import World, hot_server_request
from tests.recording import RecordingEmitter

pytestmark = [pytest.mark.erlang, pytest.mark.ssh,
              pytest.mark.skipif(not sshd.available(), reason="needs openssh-server (scripts/setup.sh installs it)")]

IP_A, IP_B = sshd.HOSTS


@pytest.fixture
def server_ssh(tmp_path: Path) -> Iterator[sshd.Sshd]:
    daemon = sshd.start(tmp_path / "sshd")
    yield daemon
    daemon.stop()


def ssh_config(world: World, daemon: sshd.Sshd, **runner: object) -> HotupdateConfig:
    """Over ssh the game host's own cookie applies: erl_call on the far side reads ~/.erlang.cookie of the ssh
    user. These two "hosts" are this machine, whose real ~/.erlang.cookie a test must not touch, so erl_call
    runs there with HOME at a directory of the world holding the nodes' cookie, as a game host's would."""
    host_home = world.root / "gamehost_home"
    if not host_home.exists():
        host_home.mkdir(mode=0o700)
        (host_home / ".erlang.cookie").write_text(world.cookie)
        (host_home / ".erlang.cookie").chmod(0o400)
    return world.config(runner={
        "kind": "ssh", "ssh_user": daemon.user, "ssh_port": daemon.port, "ssh_key": str(daemon.client_key),
        "ssh_known_hosts": str(daemon.known_hosts),
        "server_root": str(world.root / "hosts" / "{ip}" / "{server}"),
        "erl_cmd": ["env", f"HOME={host_home}", "erl_call", "-sname", "{server}", "-e"], **runner,
    })


async def test_update_over_ssh_loads_the_new_beam_on_nodes_behind_two_hosts(world, nodes, server_ssh):
    s1, s2 = server(world, nodes, IP_A, "qq_1"), server(world, nodes, IP_A, "qq_2")
    s3 = server(world, nodes, IP_B, "cross_1")
    pids_before = dict(nodes.pids)
    uid = str(uuid.uuid4())
    env, event = hot_server_request(world, uid, push_v2(world, uid), {"game": {IP_A: [s1, s2]}, "cross": {IP_B: [s3]}},
                                    [f"c:l({world.module})", f"{world.module}:bump()"])
    emitter = RecordingEmitter(env)

    await executor_for(world, ssh_config(world, server_ssh)).handle(env, event, emitter)

    assert {version_of(nodes, world, s) for s in (s1, s2, s3)} == {"2"}
    assert dict(nodes.pids) == pids_before  # loaded hot over ssh, not restarted
    assert [runs(world, IP_A, s1), runs(world, IP_A, s2), runs(world, IP_B, s3)] == [1, 1, 1]
    finished = {e.ip: e for e in by_type(emitter, IpFinished)}
    assert set(finished) == {IP_A, IP_B}
    assert f"{{module,{world.module}}}" in finished[IP_A].erl_data[s1].data.replace(" ", "")
    done = completed(emitter)
    assert (done.final_result, done.ok_count, done.failed_count) == (True, 3, 0)


async def test_a_host_whose_key_is_not_pinned_is_refused_and_nothing_runs_there(world, nodes, server_ssh):
    s1 = server(world, nodes, IP_A, "qq_1")
    s3 = server(world, nodes, IP_B, "cross_1")
    # known_hosts pins 127.0.0.1 only: 127.0.0.2 answers with a key ssh has no record of.
    pinned = server_ssh.root / "known_hosts_a"
    pinned.write_text("".join(line + "\n" for line in server_ssh.known_hosts.read_text().splitlines()
                              if line.startswith(f"[{IP_A}]")))
    uid = str(uuid.uuid4())
    env, event = hot_server_request(world, uid, push_v2(world, uid), {"game": {IP_A: [s1]}, "cross": {IP_B: [s3]}},
                                    [f"c:l({world.module})", f"{world.module}:bump()"])
    emitter = RecordingEmitter(env)

    await executor_for(world, ssh_config(world, server_ssh, ssh_known_hosts=str(pinned))).handle(env, event, emitter)

    assert (version_of(nodes, world, s1), runs(world, IP_A, s1)) == ("2", 1)
    assert (version_of(nodes, world, s3), runs(world, IP_B, s3)) == ("1", 0)  # no files, no Erlang command
    refused = next(e for e in by_type(emitter, IpFinished) if e.ip == IP_B)
    assert refused.update_data[s3].status is False
    assert refused.update_data[s3].data.startswith("更新失败,不执行erl命令: ")  # the seed's text, then why
    assert "Host key verification failed" in refused.update_data[s3].data
    assert refused.erl_data[s3].model_dump() == {"data": "更新失败,不执行erl命令", "status": False}
    done = completed(emitter)
    assert (done.final_result, done.ok_count, done.failed_count) == (False, 1, 1)


async def test_a_login_the_host_refuses_fails_at_once_instead_of_prompting(world, nodes, server_ssh):
    s1 = server(world, nodes, IP_A, "qq_1")
    stranger = sshd.keygen(server_ssh.root / "stranger_ed25519")
    uid = str(uuid.uuid4())
    env, event = hot_server_request(world, uid, push_v2(world, uid), {"game": {IP_A: [s1]}}, [f"c:l({world.module})"])
    emitter = RecordingEmitter(env)

    await executor_for(world, ssh_config(world, server_ssh, ssh_key=str(stranger))).handle(env, event, emitter)

    assert version_of(nodes, world, s1) == "1"
    failed = by_type(emitter, IpFinished)[0]
    assert "Permission denied" in failed.update_data[s1].data
    assert completed(emitter).final_result is False


async def test_runner_quotes_hostile_arguments_so_the_far_shell_gets_them_back_exactly(server_ssh, tmp_path):
    runner = SshRunner(RunnerConfig(kind="ssh", ssh_user=server_ssh.user, ssh_port=server_ssh.port,
                                    ssh_key=server_ssh.client_key, ssh_known_hosts=server_ssh.known_hosts))
    pieces = ["a b", "it's", '"q"', f"$(touch {tmp_path}/pwned)", "`id`", ";", "&&", "*", ""]
    async with runner.session(IP_B, "quoting") as host:
        result = await host.run(["printf", "%s\\n", *pieces], timeout=20)
    assert result.ok, result.describe()
    assert result.stdout.split("\n")[:-1] == pieces
    assert not (tmp_path / "pwned").exists()
