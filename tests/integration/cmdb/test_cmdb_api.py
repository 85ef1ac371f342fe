"""The CMDB's HTTP API through FastAPI's TestClient: tokens, refusals with messages, and the outbox."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from producers.cmdb.api import create_app
from producers.cmdb.database import CmdbDatabase
from producers.cmdb.process_manager import on_files_pulled
from tests.cmdb_support import FILES, auth, files_pulled, incoming, make_config, outbox

START = {"project": "ssss", "area": "大陆", "update_type": "hot_server", "version": "004200000"}


@pytest.fixture
def client(tmp_path, database):
    with TestClient(create_app(make_config(tmp_path), database=database)) as test_client:
        yield test_client


def _start(client: TestClient, **overrides: object) -> str:
    response = client.post("/api/updates", json={**START, **overrides}, headers=auth())
    assert response.status_code == 201, response.text
    update_id: str = response.json()["id"]
    return update_id


def _pull(database: CmdbDatabase) -> None:
    on_files_pulled(incoming(files_pulled(outbox(database)[-1])), database)


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong-token"}, {"Authorization": "Basic YWxpY2U6eA=="},
     {"Authorization": "Bearer "}],
    ids=["missing", "unknown", "not-bearer", "empty"],
)
def test_start_without_a_valid_token_is_401_and_publishes_nothing(client, database, headers):
    response = client.post("/api/updates", json=START, headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert "operator token" in response.json()["detail"]
    assert outbox(database) == []


def test_push_without_a_valid_token_is_401_and_publishes_nothing(client, database):
    update_id = _start(client)
    _pull(database)
    response = client.post(f"/api/updates/{update_id}/push", json={}, headers={"Authorization": "Bearer nope"})
    assert response.status_code == 401
    assert len(outbox(database)) == 1


def test_an_invalid_body_without_token_is_still_401(client, database):
    response = client.post("/api/updates", json={"version": "x"})
    assert response.status_code == 401


def test_start_returns_the_id_and_queues_pull_requested_by_the_operator(client, database):
    response = client.post("/api/updates", json=START, headers=auth("bob"))
    assert response.status_code == 201
    body = response.json()
    assert body["state"] == "pull_requested"
    [env] = outbox(database)
    assert env.type == "hotupdate.pull.requested.v1"
    assert env.updateid == body["id"]
    assert env.data["requested_by"] == "bob"
    assert (env.project, env.area, env.sequence) == ("ssss", "cn", 0)


def test_start_accepts_the_area_code_and_the_type_field(client, database):
    body = {"project": "snqxz", "area": "大陆", "area_code": "cn_new", "type": "hot_server", "version": "7"}
    assert client.post("/api/updates", json=body, headers=auth()).status_code == 201
    assert outbox(database)[0].area == "cn_new"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({**START, "project": "nope"}, "unknown project 'nope'"),
        ({**START, "area": "火星"}, "unknown area '火星'"),
        ({**START, "project": "snqxz"}, "several codes (cn, cn_new): choose one with area_code"),
        ({**START, "update_type": "hot_client"}, "client_type 0 or 1"),
        ({**START, "version": "4.2.0"}, "String should match pattern"),
        ({**START, "version": "../../etc"}, "String should match pattern"),
        ({**START, "update_type": "cold"}, "Input should be 'hot_client' or 'hot_server'"),
        ({**START, "surprise": 1}, "Extra inputs are not permitted"),
    ],
    ids=["project", "area", "ambiguous-area", "client-type", "version", "version-path", "type", "extra"],
)
def test_bad_start_is_422_with_a_message_and_publishes_nothing(client, database, body, message):
    response = client.post("/api/updates", json=body, headers=auth())
    assert response.status_code == 422
    assert message in response.text
    assert outbox(database) == []


def test_unknown_update_is_404(client):
    for method, path in (("GET", "/api/updates/nope"), ("GET", "/api/updates/nope/files"),
                         ("POST", "/api/updates/nope/push")):
        response = client.request(method, path, headers=auth())
        assert response.status_code == 404, path
        assert response.json() == {"detail": "no hot update with id 'nope'"}


def test_push_before_the_pull_finished_is_409_and_publishes_nothing(client, database):
    update_id = _start(client)
    response = client.post(f"/api/updates/{update_id}/push", headers=auth())
    assert response.status_code == 409
    assert "pull has not finished" in response.json()["detail"]
    assert len(outbox(database)) == 1


def test_files_are_409_until_pulled_then_listed(client, database):
    update_id = _start(client)
    assert client.get(f"/api/updates/{update_id}/files", headers=auth()).status_code == 409
    _pull(database)
    response = client.get(f"/api/updates/{update_id}/files", headers=auth())
    assert response.status_code == 200
    assert response.json() == {"id": update_id, "state": "pulled", "files": [f.model_dump() for f in FILES]}


def test_push_with_no_body_pushes_every_file(client, database):
    update_id = _start(client)
    _pull(database)
    response = client.post(f"/api/updates/{update_id}/push", headers=auth("bob"))
    assert response.status_code == 200, response.text
    assert response.json()["state"] == "push_requested"
    push = outbox(database)[-1]
    assert push.type == "hotupdate.push.requested.v1"
    assert len(push.data["files"]) == len(FILES)
    assert push.data["requested_by"] == "bob"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"files": ["ebin/nope.beam"]}, "not among the pulled files"),
        ({"files": ["../../etc/passwd"]}, "without '..'"),
        ({"files": []}, "choose at least one file"),
        ({"servers": ["qq_404"]}, "not in the inventory"),
        ({"cdn_dirs": ["t1"]}, "choose servers, not cdn_dirs"),
    ],
    ids=["unpulled-file", "path-escape", "no-file", "unknown-server", "cdn-for-server"],
)
def test_bad_push_is_422_with_a_message_and_publishes_nothing(client, database, body, message):
    update_id = _start(client)
    _pull(database)
    response = client.post(f"/api/updates/{update_id}/push", json=body, headers=auth())
    assert response.status_code == 422
    assert message in response.text
    assert len(outbox(database)) == 1


def test_status_shows_state_files_and_choices(client, database):
    update_id = _start(client)
    _pull(database)
    client.post(f"/api/updates/{update_id}/push", json={"servers": ["qq_1"]}, headers=auth())
    status = client.get(f"/api/updates/{update_id}", headers=auth()).json()
    assert status["state"] == "push_requested"
    assert status["requested_by"] == "alice"
    assert [f["file_name"] for f in status["files"]] == [f.file_name for f in FILES]
    assert status["update_targets"] == {"update_server_list": {"game": {"127.0.0.11": ["qq_1"]}}}
    assert status["narrowed"] is True
    assert status["reason"] is None
    assert status["created_at"].endswith(("Z", "+00:00"))


def test_reads_need_a_token_too(client):
    update_id = _start(client)
    assert client.get(f"/api/updates/{update_id}").status_code == 401


def test_openapi_documents_the_routes_and_the_bearer_scheme(client):
    spec = client.get("/openapi.json").json()
    assert {"/api/updates", "/api/updates/{update_id}", "/api/updates/{update_id}/files",
            "/api/updates/{update_id}/push"} <= set(spec["paths"])
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
