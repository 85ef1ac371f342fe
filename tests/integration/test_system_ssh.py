"""A whole hot_server update over SSH, end to end: the operator asks the CMDB over HTTP, files are
pulled and pushed by rsync, and the ops executor (its own ``hotupdate`` process) reaches the demo
world's four game hosts (127.0.0.11/12/21/31) through a real sshd, hot-loading real Erlang nodes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from consumers.ops_executor.ssh_runner import STAGING_ROOT
from demo.world import PROJECT, SERVERS
from tests import sshd
from tests.system import BUMP, FINAL, System, erlang_commands, expected_runs, running_system

pytestmark = [pytest.mark.rabbit, pytest.mark.erlang, pytest.mark.rsync, pytest.mark.ssh, pytest.mark.slow,
              pytest.mark.skipif(not sshd.available(), reason="needs openssh-server (scripts/setup.sh installs it)")]

IPS = tuple(ip for ips in SERVERS.values() for ip in ips)


@pytest.fixture
def ssh_system(tmp_path: Path, amqp_url: str) -> Iterator[tuple[System, sshd.Sshd]]:
    daemon = sshd.start(tmp_path / "sshd", IPS)
    commands = erlang_commands("c:l(role_server).", BUMP)

    def over_ssh(config: dict[str, Any]) -> None:
        commands(config)
        # The game hosts' own ~/.erlang.cookie (of the ssh user) is the nodes' cookie.
        daemon.give_cookie(Path(config["projects"][PROJECT]["erlang_cookie_file"]).read_text().strip())
        config["ops_managers"]["ops1"]["runner"].update({
            "kind": "ssh", "ssh_user": daemon.user, "ssh_port": daemon.port, "ssh_key": str(daemon.client_key),
            "ssh_known_hosts": str(daemon.known_hosts),
        })

    try:
        with running_system(tmp_path / "world", amqp_url, over_ssh) as system:
            yield system, daemon
    finally:
        daemon.stop()


def test_a_hot_server_update_requested_at_the_cmdb_runs_over_ssh_once_per_host(ssh_system):
    system, daemon = ssh_system

    final = system.run_hot_server()

    assert final["state"] == "failed", final  # qq_4 fails on purpose (its ebin is a file); the rest updated
    results = final.get("results") or []
    assert sorted(r["ok"] for r in results) == [False] + [True] * (len(IPS) - 1), results
    failed = next(r for r in results if not r["ok"])
    assert "not a directory" in failed["detail"]["update_data"]["qq_4"]["data"], failed
    assert system.runs() == expected_runs(system.world)  # every other server ran its commands once
    assert daemon.logins() == dict.fromkeys(IPS, 1)  # one login per game host for the whole update
    staging = daemon.home / STAGING_ROOT
    assert not staging.exists() or list(staging.iterdir()) == []
    assert final["state"] in FINAL
