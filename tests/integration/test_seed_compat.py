"""The old system as a client (issue 17): the seed document's own payloads in, the seed's callbacks out.

The requests are the seed's examples (前端热更新 / 后端热更新) as JSON, field for field; only the
placeholder ``uuid`` differs between the two (the seed gives both 'xxx'), and the unquoted md5s
are strings. They enter at the CMDB's compatibility endpoint and become the native flow's events.
The callbacks are what a ``format: seed`` webhook receives from the notifier for the executor's
events, compared with the seed's shapes. The seed's addresses (10.1.1.1, …) are inventory data
only here: nothing connects to them.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from bus.contract.envelope import Envelope
from bus.contract.events import (
    FileEntry,
    IpFinished,
    PullFailed,
    PushRequested,
    ServerResult,
    UpdateCompleted,
    UpdateRequested,
)
from bus.contract.registry import DEFAULT_REGISTRY, make_envelope
from bus.publisher import AsyncPublisher
from consumers.notifier.service import build_service
from domain.config import parse_config
from producers.cmdb.api import create_app
from producers.cmdb.database import CmdbDatabase
from producers.cmdb.process_manager import on_files_pulled, on_files_pushed
from tests.cmdb_support import auth, config_dict, files_pulled, files_pushed, incoming, outbox
from tests.webhook_receiver import WebhookReceiver

SEED_HOT_CLIENT: dict[str, Any] = {
    "ops_manager": 1,
    "update_type": "hot_client",
    "client_type": 0,
    "data": [
        {"cdn_root_url": "res.ssss.chuangyunet.com", "cdn_dir": "t1"},
        {"cdn_root_url": "res.ssss.chuangyunet.com", "cdn_dir": "test_r1"},
        {"cdn_root_url": "res.ssss.chuangyunet.com", "cdn_dir": "s1"},
        {"cdn_root_url": "res.ssss.chuangyunet.com", "cdn_dir": "r1"},
    ],
    "uuid": "xxx", "version": "003100000",
    "update_file_list": [
        {"file_name": "a.txt", "file_md5": "abe347d3fdff45f1078102c4637852a5"},
        {"file_name": "b.txt", "file_md5": "5724c05c650550ac8034129ad7a4d915"},
    ],
}
SEED_HOT_SERVER: dict[str, Any] = {
    "update_type": "hot_client",  # sic: the seed's back-end example; its targets make it hot_server
    "update_server_list": {
        "game": {"10.1.1.1": ["qq_1", "qq_2"], "10.1.1.2": ["qq_3", "qq_4"]},
        "cross": {"192.168.1.1": ["cross_1", "corss_2"], "192.168.1.3": ["cross_3", "corss_4"]},
        "cross_center": {"172.17.26.12": ["center_1", "center_2"], "172.17.26.15": ["center_4", "center_6"]},
    },
    "uuid": "xxxx",  # the seed's callbacks for a hot_server update say 'xxxx'
    "version": "003100000",
    "update_file_list": [
        {"file_name": "a.txt", "file_md5": "abe347d3fdff45f1078102c4637852a5"},
        {"file_name": "b.txt", "file_md5": "5724c05c650550ac8034129ad7a4d915"},
    ],
    "erlang_cmd_list": ["erlang_cmd1", "erlang_cmd2"],
}
SEED_PER_IP: dict[str, Any] = {
    "ip": {"10.1.1.1": {
        "update_data": {"qq_1": {"data": "更新失败,不执行erl命令", "status": False},
                        "qq_2": {"data": "更新失败,不执行erl命令", "status": False}},
        "erl_data": {"qq_1": {"data": "更新失败,不执行erl命令", "status": False},
                     "qq_2": {"data": "更新失败,不执行erl命令", "status": False}},
    }},
    "uuid": "xxxx", "update_type": "hot_server", "version": "003100000",
}
SEED_FINAL: dict[str, Any] = {
    "final_result": True, "final_data": "全部完成", "uuid": "xxxx", "update_type": "hot_server", "version": "003100000",
}
SEED_CLIENT_FINAL: dict[str, Any] = {
    "update_type": "hot_client",
    "data": [
        {"cdn_root_url": "res.ssss.chuangyunet.com", "cdn_dir": "t1", "status": True},
        {"cdn_root_url": "res.ssss.chuangyunet.com", "cdn_dir": "test_r1", "status": True},
        {"cdn_root_url": "res.ssss.chuangyunet.com", "cdn_dir": "s1", "status": True},
        {"cdn_root_url": "res.ssss.chuangyunet.com", "cdn_dir": "r1", "status": False},
    ],
    "uuid": "xxx", "version": "003100000",
}
SECRET = b"s3cret-shared-with-the-old-cmdb"


def _seed_project(raw: dict[str, Any]) -> dict[str, Any]:
    """ssss with the seed's servers and CDN dirs in its inventory, and the seed's placeholder commands allowed."""
    ssss = raw["projects"]["ssss"]
    ssss["inventory"] = {"cn": {"servers": SEED_HOT_SERVER["update_server_list"], "cdn": SEED_HOT_CLIENT["data"]}}
    ssss["erlang_cmd_allowed"] = [*ssss["erlang_cmd_allowed"], r"erlang_cmd[0-9]+"]
    raw["ops_managers"]["ops1"]["runner"] = {"kind": "ssh"}  # real hosts (none is started here)
    return raw


@pytest.fixture
def database(tmp_path: Path):
    db = CmdbDatabase(f"sqlite:///{tmp_path / 'cmdb.db'}")
    yield db
    db.close()


def _seed_files() -> list[FileEntry]:
    return [FileEntry(file_name=f["file_name"], file_md5=f["file_md5"], size=10)
            for f in SEED_HOT_SERVER["update_file_list"]]


def _follow(database: CmdbDatabase, pull: Envelope) -> UpdateRequested:
    """Play file_pull and file_push answering the CMDB; the update request it then sends."""
    on_files_pulled(incoming(files_pulled(pull, _seed_files())), database)
    push = outbox(database)[-1]
    assert isinstance(DEFAULT_REGISTRY.decode(push), PushRequested)
    on_files_pushed(incoming(files_pushed(push)), database)
    request = outbox(database)[-1]
    event = DEFAULT_REGISTRY.decode(request)
    assert isinstance(event, UpdateRequested) and request.updateid == pull.updateid
    return event


async def test_the_seeds_requests_become_the_native_flows_events(tmp_path, database):
    config = parse_config(_seed_project(config_dict()), tmp_path / "config.yaml")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(config, database=database)),
                                 base_url="http://cmdb") as api:
        refused = await api.post("/compat/v1/ssss/大陆/hot_update", json=SEED_HOT_SERVER)
        assert refused.status_code == 401  # authenticated like the native API
        server = await api.post("/compat/v1/ssss/大陆/hot_update", json=SEED_HOT_SERVER, headers=auth())
        assert server.status_code == 201, server.text
        assert server.json()["uuid"] == "xxxx" and server.json()["update_type"] == "hot_server"
        assert "taken as 'hot_server'" in server.json()["note"]
        (pull,) = outbox(database)
        assert (pull.type, pull.updateid, pull.project, pull.area) == ("hotupdate.pull.requested.v1", "xxxx",
                                                                       "ssss", "cn")
        request = _follow(database, pull)
        assert request.update_server_list == SEED_HOT_SERVER["update_server_list"]
        assert request.erlang_cmd_list == SEED_HOT_SERVER["erlang_cmd_list"]
        assert [(f.file_name, f.file_md5) for f in request.update_file_list] == [
            (f["file_name"], f["file_md5"]) for f in SEED_HOT_SERVER["update_file_list"]]
        assert (request.ops_manager, request.requested_by) == ("ops1", "alice")

        client = await api.post("/compat/v1/ssss/cn/hot_update", json=SEED_HOT_CLIENT, headers=auth("bob"))
        assert client.status_code == 201, client.text
        assert client.json() == {"uuid": "xxx", "state": "pull_requested", "update_type": "hot_client", "note": ""}
        request = _follow(database, outbox(database)[-1])
        assert [d.model_dump() for d in request.data or []] == SEED_HOT_CLIENT["data"]
        assert request.client_type == 0 and request.update_server_list is None

        again = await api.post("/compat/v1/ssss/cn/hot_update", json=SEED_HOT_CLIENT, headers=auth())
        assert again.status_code == 409  # one update per uuid
        unknown = {**SEED_HOT_SERVER, "uuid": "yyyy",
                   "update_server_list": {"game": {"10.9.9.9": ["qq_1"]}}}
        outside = await api.post("/compat/v1/ssss/cn/hot_update", json=unknown, headers=auth())
        assert outside.status_code == 422 and "10.9.9.9" in outside.text  # the inventory decides, as natively


@pytest.mark.rabbit
async def test_a_seed_format_webhook_receives_the_seeds_per_ip_and_final_callbacks(amqp_url, tmp_path):
    with WebhookReceiver(SECRET) as hook:
        raw = _seed_project(config_dict())
        raw["amqp_url"] = amqp_url
        raw["notifier"] = {"state_url": f"sqlite:///{tmp_path / 'notifier.db'}"}
        raw["projects"]["ssss"]["webhooks"] = [{
            "url": hook.url, "secret": SECRET.decode(), "format": "seed",
            "events": ["completed", "failed", "aborted", "progress"], "backoff_seconds": 0.05,
        }]
        config = parse_config(raw, tmp_path / "config.yaml")
        per_ip = IpFinished(
            version="003100000", ip="10.1.1.1", group="game",
            update_data={s: ServerResult(**r) for s, r in SEED_PER_IP["ip"]["10.1.1.1"]["update_data"].items()},
            erl_data={s: ServerResult(**r) for s, r in SEED_PER_IP["ip"]["10.1.1.1"]["erl_data"].items()},
        )
        final = UpdateCompleted(update_type="hot_server", version="003100000", final_result=True,
                                final_data="全部完成", ok_count=8)
        client_final = UpdateCompleted(update_type="hot_client", version="003100000", final_result=False,
                                       final_data="1/4 失败", data=SEED_CLIENT_FINAL["data"], ok_count=3,
                                       failed_count=1)
        no_shape = PullFailed(update_type="hot_server", version="003100000", reason="empty", detail="nothing")
        envelopes = [make_envelope(per_ip, source="tests", updateid="xxxx", project="ssss", area="cn", sequence=5),
                     make_envelope(final, source="tests", updateid="xxxx", project="ssss", area="cn", sequence=9),
                     make_envelope(no_shape, source="tests", updateid="zzzz", project="ssss", area="cn"),
                     make_envelope(client_final, source="tests", updateid="xxx", project="ssss", area="cn",
                                   sequence=9)]
        service = build_service(config)
        await service.start()
        try:
            async with AsyncPublisher(amqp_url) as publisher:
                for envelope in envelopes:
                    await publisher.publish(envelope)
            calls = await hook.wait_for(3)
            await asyncio.sleep(0.5)  # a fourth (the failed pull) would have come by now
        finally:
            await service.stop()
    bodies = sorted((json.loads(c.body) for c in hook.calls), key=lambda b: json.dumps(b, sort_keys=True))
    expected = sorted([SEED_PER_IP, SEED_FINAL, SEED_CLIENT_FINAL], key=lambda b: json.dumps(b, sort_keys=True))
    assert bodies == expected
    assert all(c.verified for c in calls)
