"""Issue 9 on the whole running system: retry-failed and rollback, counted on real Erlang nodes."""

from __future__ import annotations

import shutil

import pytest

from demo.erlang import compile_module
from demo.world import AREA_CODE, FAILING, MODULE
from tests.system import BUMP, FINAL, System, erlang_commands, running_system

pytestmark = [pytest.mark.rabbit, pytest.mark.erlang, pytest.mark.rsync, pytest.mark.slow]


@pytest.fixture
def system(tmp_path, amqp_url):
    with running_system(tmp_path / "world", amqp_url, erlang_commands(f"c:l({MODULE}).", BUMP)) as running:
        yield running


def _version(system: System, server: str) -> str:
    return system.nodes.apply(system.world.node(server), MODULE, "version")


def _run(system: System, version: str, servers: list[str] | None = None) -> dict:
    update_id = system.post_update(version=version)
    pulled = system.wait_state(update_id, {"pulled"} | FINAL)
    assert pulled["state"] == "pulled", pulled
    body = {"servers": servers} if servers else {}
    assert system.http.post(f"/api/updates/{update_id}/push", json=body).status_code < 400
    return system.wait_state(update_id, FINAL, timeout=120)


def _follow(system: System, response) -> dict:
    assert response.status_code == 201, response.text
    return system.wait_state(response.json()["id"], FINAL, timeout=120)


def test_retry_failed_runs_exactly_the_failed_server_again(system):
    first = _run(system, "004200000")
    assert first["state"] == "failed"
    assert system.runs()[FAILING] == 0
    # the operator repairs the broken server's code directory (its node loads from lib/), then
    # retries only what failed
    home = system.world.server_dir("127.0.0.12", FAILING)
    (home / "ebin").unlink()
    (home / "ebin").symlink_to("lib")
    retried = _follow(system, system.http.post(f"/api/updates/{first['id']}/retry-failed", json={}))
    assert retried["state"] == "completed", retried
    assert retried["parent_id"] == first["id"]
    assert {r["target"] for r in retried["results"]} == {"127.0.0.12"}
    runs = system.runs()
    assert runs[FAILING] == 1
    assert all(count == 1 for count in runs.values()), runs  # nobody else ran a second time
    assert _version(system, FAILING) == "2"


def test_rollback_brings_the_nodes_back_to_the_previous_completed_version(system):
    v3 = system.world.root / "versions" / "server" / "x" / AREA_CODE / "004300000" / "reloadfiles"
    v3.mkdir(parents=True)
    compile_module(MODULE, 3, v3)
    shutil.rmtree(v3 / ".src_v3", ignore_errors=True)
    servers = ["qq_1", "qq_2"]
    first = _run(system, "004200000", servers)
    assert first["state"] == "completed", first
    second = _run(system, "004300000", servers)
    assert second["state"] == "completed", second
    assert [_version(system, s) for s in servers] == ["3", "3"]
    rolled = _follow(system, system.http.post(f"/api/updates/{second['id']}/rollback", json={}))
    assert rolled["state"] == "completed", rolled
    assert rolled["version"] == "004200000" and rolled["parent_id"] == second["id"]
    assert [_version(system, s) for s in servers] == ["2", "2"]
    assert _version(system, "qq_3") == "1"  # not a target: untouched
