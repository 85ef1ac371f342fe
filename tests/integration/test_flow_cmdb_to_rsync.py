"""Issue 3 end to end: an operator's HTTP request to the CMDB, through file_pull and file_push on the
real broker, to files arriving at a real rsync daemon's module — and each way it can stop."""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

from bus.contract.envelope import Envelope
from consumers.file_pull.service import build_service as build_pull
from consumers.file_push.service import build_service as build_push
from demo.rsyncd import RsyncDaemon, free_port
from domain.config import parse_config
from producers.cmdb.app import run as run_cmdb
from producers.cmdb.bootstrap import bootstrap
from tests.busprobe import Probe

pytestmark = [pytest.mark.rabbit, pytest.mark.rsync]
TOKEN = secrets.token_urlsafe(16)
FILES = {"role_server.beam": b"\x00BEAM v2" * 300, "data/skill.config": b"{skill, 2}.\n"}


def _config(tmp_path: Path, amqp_url: str, daemon: RsyncDaemon, *, pass_mode: int = 0o600,
            password: str | None = None, port: int | None = None):
    versions = tmp_path / "versions"
    real = versions / "server" / "x" / "cn" / "004200000" / "reloadfiles"
    for name, data in FILES.items():
        (real / name).parent.mkdir(parents=True, exist_ok=True)
        (real / name).write_bytes(data)
    (versions / "server" / "ssss").symlink_to("x")  # the seed's project-directory link
    pass_file = tmp_path / "ssss.password"
    pass_file.write_text((password or daemon.password) + "\n")
    os.chmod(pass_file, pass_mode)
    raw = {
        "amqp_url": amqp_url,
        "broker": {"shared_user": "guest"},  # every component of the test logs in as guest
        "projects": {"ssss": {
            "areas": {"hot_server": {"大陆": ["cn"]}},
            "rsync_targets": [{"name": "ssss_cn", "area": "大陆", "ip": "127.0.0.1", "port": port or daemon.port,
                               "module": daemon.module, "user": daemon.user, "pass_file": str(pass_file),
                               "ops_manager": "ops1"}],
            "inventory": {"cn": {"servers": {"game": {"127.0.0.11": ["qq_1", "qq_2"]}}}},
            "erlang_cmd_list": ["c:l(role_server)."],
        }},
        "receivers": {"recv1": {"projects": ["ssss"], "version_root": str(versions),
                                "backup_root": str(tmp_path / "backup"), "rsync_timeout_seconds": 10}},
        "ops_managers": {"ops1": {"projects": ["ssss"], "incoming_root": str(daemon.module_path),
                                  "cdn_origin_root": str(tmp_path / "cdn")}},
        "cmdb": {"database_url": f"sqlite:///{tmp_path / 'cmdb.db'}",
                 "operators": [{"name": "alice", "token_sha256": hashlib.sha256(TOKEN.encode()).hexdigest()}]},
    }
    return parse_config(raw, tmp_path / "hotupdate.yaml")


@asynccontextmanager
async def _system(config):
    """The CMDB (HTTP, outbox relay, process manager) and the receiver's two consumers, running."""
    runtime = bootstrap(config)
    port = free_port()
    stop = asyncio.Event()
    cmdb = asyncio.create_task(run_cmdb(runtime, host="127.0.0.1", port=port, stop=stop))
    pull, push = build_pull(config, "recv1"), build_push(config, "recv1")
    await pull.start()
    await push.start()
    await asyncio.wait_for(runtime.consumer_started.wait(), 30)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}",
                                     headers={"Authorization": f"Bearer {TOKEN}"}) as http:
            yield http
    finally:
        stop.set()
        await cmdb
        await pull.stop()
        await push.stop()


async def _until(http: httpx.AsyncClient, update_id: str, states: set[str], timeout: float = 30) -> dict:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        body = (await http.get(f"/api/updates/{update_id}")).json()
        if body["state"] in states:
            return body
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"update stuck in {body['state']}: {body.get('reason')}")
        await asyncio.sleep(0.1)


async def _start_and_push(http, probe=None) -> tuple[str, dict]:
    created = await http.post("/api/updates", json={"project": "ssss", "area": "大陆", "type": "hot_server",
                                                    "version": "004200000"})
    assert created.status_code == 201, created.text
    update_id = created.json()["id"]
    pulled = await _until(http, update_id, {"pulled", "pull_failed"})
    if pulled["state"] != "pulled":
        return update_id, pulled
    assert (await http.post(f"/api/updates/{update_id}/push", json={})).status_code < 300
    return update_id, await _until(http, update_id, {"update_requested", "push_failed"})


def _types(probe: Probe, update_id: str) -> list[str]:
    envs = [Envelope.from_bytes(m.body) for m in probe.messages]
    return [e.event_name for e in sorted((e for e in envs if e.updateid == update_id), key=lambda e: e.sequence)]


async def test_operator_request_lands_the_files_on_the_rsync_module_with_every_step_an_event(
        amqp_url, tmp_path, rsync_daemon):
    config = _config(tmp_path, amqp_url, rsync_daemon)
    async with Probe(amqp_url) as probe, _system(config) as http:
        await probe.bind("ssss.#")
        update_id, update = await _start_and_push(http)
        await probe.wait_for(5)
    assert update["state"] == "update_requested", update
    assert _types(probe, update_id) == ["pull.requested", "files.pulled", "push.requested", "files.pushed",
                                        "update.requested"]
    landed = rsync_daemon.module_path / "ssss" / "cn" / update_id / "004200000"
    for name, data in FILES.items():
        assert hashlib.md5((landed / name).read_bytes()).hexdigest() == hashlib.md5(data).hexdigest()
    requested = [Envelope.from_bytes(m.body) for m in probe.messages][-1]
    assert requested.data["update_server_list"] == {"game": {"127.0.0.11": ["qq_1", "qq_2"]}}
    assert requested.data["requested_by"] == "alice"


async def test_missing_version_stops_at_pull_failed_and_nothing_is_pushed(amqp_url, tmp_path, rsync_daemon):
    config = _config(tmp_path, amqp_url, rsync_daemon)
    async with Probe(amqp_url) as probe, _system(config) as http:
        await probe.bind("ssss.#")
        created = await http.post("/api/updates", json={"project": "ssss", "area": "大陆", "type": "hot_server",
                                                        "version": "009999999"})
        update_id = created.json()["id"]
        update = await _until(http, update_id, {"pull_failed"})
        push = await http.post(f"/api/updates/{update_id}/push", json={})
        await asyncio.sleep(0.3)
    assert "009999999" in update["reason"]
    assert push.status_code == 409
    assert _types(probe, update_id) == ["pull.requested", "pull.failed"]


@pytest.mark.parametrize(
    ("setup", "reason_part"),
    [
        ({"pass_mode": 0o644}, "600"),
        ({"password": "wrong-password"}, "auth failed"),
        ({"port": "closed"}, "refused"),
    ],
    ids=["password-file-mode", "wrong-password", "target-down"],
)
async def test_push_failure_stops_the_flow_with_the_reason(amqp_url, tmp_path, rsync_daemon, setup, reason_part):
    if setup.get("port") == "closed":
        setup = {"port": free_port()}
    config = _config(tmp_path, amqp_url, rsync_daemon, **setup)
    async with Probe(amqp_url) as probe, _system(config) as http:
        await probe.bind("ssss.#")
        update_id, update = await _start_and_push(http)
        await asyncio.sleep(0.3)
    assert update["state"] == "push_failed"
    assert reason_part in update["reason"]
    assert _types(probe, update_id) == ["pull.requested", "files.pulled", "push.requested", "push.failed"]
    assert not (rsync_daemon.module_path / "ssss").exists()
