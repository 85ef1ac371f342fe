"""The CMDB's API refuses what the project's configuration does not allow: 422 naming the field, nothing queued.

IPs, servers (on that IP, in that group) and CDN dirs must be in the inventory; Erlang commands
must match one of the project's ``erlang_cmd_allowed`` forms (default: hot loading only).
"""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from producers.cmdb.api import create_app
from producers.cmdb.database import CmdbDatabase
from producers.cmdb.process_manager import on_files_pulled
from tests.cmdb_support import auth, files_pulled, incoming, make_config, outbox

START = {"project": "ssss", "area": "大陆", "update_type": "hot_server", "version": "004200000"}


@pytest.fixture
def client(tmp_path, database):
    with TestClient(create_app(make_config(tmp_path), database=database)) as test_client:
        yield test_client


def _pulled(client: TestClient, database: CmdbDatabase, **overrides: object) -> str:
    response = client.post("/api/updates", json={**START, **overrides}, headers=auth())
    assert response.status_code == 201, response.text
    on_files_pulled(incoming(files_pulled(outbox(database)[-1])), database)
    return str(response.json()["id"])


@pytest.mark.parametrize(
    ("commands", "field"),
    [
        (['os:cmd("touch /tmp/pwned")'], "erlang_cmd_list[0]"),
        (["c:l(role_server).", "os:cmd(\"id\")."], "erlang_cmd_list[1]"),
        (["open_port({spawn, \"id\"}, [])"], "erlang_cmd_list[0]"),
        (["c:l(role_server), os:cmd(\"id\")"], "erlang_cmd_list[0]"),  # a second call smuggled after an allowed one
        (["c:l(role_server).\nos:cmd(\"id\")."], "erlang_cmd_list[0]"),
    ],
    ids=["os-cmd", "second", "open-port", "comma", "two-expressions"],
)
def test_start_with_an_erlang_command_outside_the_allowed_forms_is_422_naming_it(client, database, commands, field):
    response = client.post("/api/updates", json={**START, "erlang_cmd_list": commands}, headers=auth())

    assert response.status_code == 422, response.text
    assert response.json()["detail"].startswith(f"{field}: ")
    assert "not an allowed Erlang command" in response.json()["detail"]
    assert outbox(database) == []


def test_start_with_hot_loading_commands_is_accepted(client, database):
    commands = ["c:l(role_server).", "l(mail_server)", "code:soft_purge(role_server)", "code:load_file(role_server)."]
    response = client.post("/api/updates", json={**START, "erlang_cmd_list": commands}, headers=auth())
    assert response.status_code == 201, response.text


@pytest.mark.parametrize(
    ("body", "field", "value"),
    [
        ({"update_server_list": {"game": {"127.0.0.99": ["qq_1"]}}}, "update_server_list[game][127.0.0.99]",
         "127.0.0.99"),
        ({"update_server_list": {"game": {"127.0.0.11": ["qq_1", "qq_3"]}}}, "update_server_list[game][127.0.0.11][1]",
         "qq_3"),  # qq_3 is in the inventory, but on 127.0.0.12
        ({"update_server_list": {"cross": {"127.0.0.11": ["qq_1"]}}}, "update_server_list[cross][127.0.0.11]",
         "127.0.0.11"),  # the IP, but not in that group
        ({"servers": ["qq_1", "qq_404"]}, "servers[1]", "qq_404"),
    ],
    ids=["ip-not-in-inventory", "server-not-on-that-ip", "ip-not-in-that-group", "unknown-server"],
)
def test_push_to_a_target_outside_the_inventory_is_422_naming_the_field(client, database, body, field, value):
    update_id = _pulled(client, database)

    response = client.post(f"/api/updates/{update_id}/push", json=body, headers=auth())

    assert response.status_code == 422, response.text
    assert response.json()["detail"].startswith(f"{field}: {value!r} is not")
    assert len(outbox(database)) == 1  # the pull only


def test_push_to_a_cdn_dir_not_configured_is_422_naming_the_field(client, database):
    update_id = _pulled(client, database, update_type="hot_client", client_type=0, version="003100000")

    response = client.post(f"/api/updates/{update_id}/push", json={"cdn_dirs": ["t1", "evil_dir"]}, headers=auth())

    assert response.status_code == 422, response.text
    assert response.json()["detail"].startswith("cdn_dirs[1]: 'evil_dir' is not in the inventory")
    assert len(outbox(database)) == 1


def test_push_narrowed_by_ip_in_the_inventory_queues_exactly_those_servers(client, database):
    update_id = _pulled(client, database)

    response = client.post(f"/api/updates/{update_id}/push",
                           json={"update_server_list": {"game": {"127.0.0.12": ["qq_4"]}}}, headers=auth())

    assert response.status_code == 200, response.text
    assert response.json()["update_targets"] == {"update_server_list": {"game": {"127.0.0.12": ["qq_4"]}}}
    assert response.json()["narrowed"] is True
