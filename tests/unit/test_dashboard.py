"""The dashboard's pages and JSON twins: read-only by construction, escaped, with security headers."""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest
from fastapi.routing import APIRoute
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from projections.dashboard import create_app
from projections.ingest import ingest_batch, record_rejection
from tests.projection_support import (
    DASHBOARD_AUTH,
    T0,
    at,
    dashboard_access,
    hot_client_flow,
    hot_server_flow,
    ip_finished,
    item,
    migrated_engine,
)

SERVER_ID = "350cf0ef-c12e-4bcc-d0df-369a09a4a357"
CLIENT_ID = "c1b2c3d4-0000-4000-8000-000000000001"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request, tmp_path):
    url = f"sqlite:///{tmp_path / 'projection.db'}" if request.param == "sqlite" else request.getfixturevalue(
        "postgres_url")
    engine = migrated_engine(url)
    flow = hot_server_flow()
    nasty = ip_finished(flow[4][0], "127.0.0.12", "game", {"qq_3": False}, offset=20, minutes=20,
                        note="<script>alert(1)</script>").model_copy(update={"id": "nasty-1"})
    later = [item(at(env, 60 * 24 * 3)) for env, _ in hot_client_flow()]  # three days later
    ingest_batch(engine, [*flow, item(nasty), *later])
    for n in range(3):
        ingest_batch(engine, hot_server_flow(updateid=f"other-{n}", project="snqxz", area="tw", failing=()))
    record_rejection(engine, service="projection", reason="malformed: body is not JSON <b>bold</b>",
                     body=b"<script>alert('parked')</script>", routing_key="ssss.cn.ip.finished.v1",
                     message_id="m-1", attempt=1, parked_at=T0)
    engine.dispose()
    return url


@pytest.fixture
async def client(database_url):
    app = create_app(database_url, access=dashboard_access())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://dash",
                                 headers=DASHBOARD_AUTH) as c:
        yield c
    app.state.engine.dispose()


def test_every_route_only_reads():
    app = create_app("sqlite://", access=dashboard_access())
    methods = set()
    for route in app.routes:
        route_methods = getattr(route, "methods", None)
        assert route_methods, f"{route} accepts any method"
        methods |= set(route_methods)
    assert methods <= {"GET", "HEAD"}
    paths = {r.path for r in app.routes if isinstance(r, APIRoute)}
    assert {"/", "/updates/{updateid}", "/rejected", "/api/updates", "/api/updates/{updateid}", "/api/rejected",
            "/api/stream"} <= paths


async def test_writes_are_refused_at_the_door_and_by_the_database(client):
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        assert (await client.request(method, "/api/updates")).status_code == 405
        assert (await client.request(method, "/")).status_code == 405
    engine = client._transport.app.state.engine
    with pytest.raises(DBAPIError, match=r"(?i)read.only|readonly"), engine.begin() as conn:
        conn.execute(text("delete from projection_updates"))


async def test_the_json_twins_are_described_by_the_openapi_schema(client):
    schema = (await client.get("/openapi.json")).json()
    for path in ("/api/updates", "/api/updates/{updateid}", "/api/rejected", "/api/stream"):
        assert set(schema["paths"][path]) == {"get"}
    params = {p["name"] for p in schema["paths"]["/api/updates"]["get"]["parameters"]}
    assert {"project", "area", "type", "status", "date_from", "date_to", "page", "page_size"} <= params
    assert "text/event-stream" in schema["paths"]["/api/stream"]["get"]["responses"]["200"]["content"]
    assert "/updates/{updateid}" not in schema["paths"]  # the HTML pages are not API


async def test_the_update_list_filters_and_pages(client):
    everything = (await client.get("/api/updates")).json()
    assert everything["total"] == 5
    assert (await client.get("/api/updates", params={"project": "snqxz"})).json()["total"] == 3
    assert (await client.get("/api/updates", params={"area": "cn", "type": "hot_client"})).json()["items"][0][
        "updateid"] == CLIENT_ID
    assert (await client.get("/api/updates", params={"status": "succeeded"})).json()["total"] == 3
    failed = (await client.get("/api/updates", params={"status": "failed"})).json()
    assert {u["updateid"] for u in failed["items"]} == {SERVER_ID, CLIENT_ID}
    day = T0.date()
    in_range = (await client.get("/api/updates", params={"date_from": str(day), "date_to": str(day)})).json()
    assert CLIENT_ID not in {u["updateid"] for u in in_range["items"]} and in_range["total"] == 4
    later = (await client.get("/api/updates", params={"date_from": str(day + timedelta(days=1))})).json()
    assert [u["updateid"] for u in later["items"]] == [CLIENT_ID]
    first = (await client.get("/api/updates", params={"page_size": 2})).json()
    third = (await client.get("/api/updates", params={"page_size": 2, "page": 3})).json()
    assert (first["pages"], len(first["items"]), len(third["items"])) == (3, 2, 1)
    assert (await client.get("/api/updates", params={"status": "bogus"})).status_code == 422


async def test_an_update_detail_has_its_timeline_grid_failed_first_files_and_events(client):
    d = (await client.get(f"/api/updates/{SERVER_ID}")).json()
    assert d["servers"] == {"expected": 7, "ok": 5, "failed": 2, "pending": 0, "not_run": 0}
    assert [(s["server"], s["ok"]) for s in d["server_list"][:2]] == [("qq_1", False), ("qq_3", False)]
    assert d["server_list"][1]["update_text"] == "<script>alert(1)</script>"
    assert [s["stage"] for s in d["timeline"]] == [
        "pull_requested", "pulled", "push_requested", "pushed", "update_requested", "started", "completed"]
    assert d["timeline"][-1]["failed"] is True
    assert [f["file_name"] for f in d["file_list"]] == ["config/skill.config", "ebin/role_server.beam"]
    assert d["rsync_target_list"][0]["ok"] is True
    assert d["events_total"] == 12 and [e["position"] for e in d["events"]] == list(range(1, 13))
    assert d["events"][0]["envelope"]["type"] == "hotupdate.pull.requested.v1"
    assert (await client.get(f"/api/updates/{SERVER_ID}", params={"events_limit": 2})).json()["events_total"] == 12
    assert (await client.get("/api/updates/no-such-update")).status_code == 404


async def test_the_detail_pages_its_ips_failed_first_with_their_total(client):
    url = f"/api/updates/{SERVER_ID}"
    whole = (await client.get(url, params={"ips_limit": 100_000})).json()
    ips = [i["ip"] for i in whole["ip_list"]]
    assert whole["ips_total"] == len(ips) >= 2 and whole["ip_list"][0]["ok"] is False
    ranks = [0 if i["ok"] is False else 3 if i["reported"] else 2 if i["not_run"] else 1 for i in whole["ip_list"]]
    assert ranks == sorted(ranks)
    pages = [(await client.get(url, params={"ips_offset": n, "ips_limit": 1})).json() for n in range(len(ips))]
    assert [p["ip_list"][0]["ip"] for p in pages] == ips
    assert {(p["ips_total"], p["ips_offset"]) for p in pages[:1]} == {(len(ips), 0)}
    assert pages[-1]["ips_offset"] == len(ips) - 1


async def test_pages_render_the_numbers(client):
    listing = (await client.get("/")).text
    assert f'data-update="{SERVER_ID}"' in listing
    assert 'data-field="servers" data-ok="5" data-failed="2" data-expected="7"' in listing
    page = (await client.get(f"/updates/{SERVER_ID}")).text
    assert 'id="card-servers"' in page and 'data-ok="5" data-failed="2"' in page
    assert page.index('data-server="qq_1"') < page.index('data-server="qq_2"')
    assert (await client.get("/?status=bogus")).status_code == 400
    assert (await client.get("/updates/unknown-update")).status_code == 404


async def test_event_content_renders_escaped(client):
    page = (await client.get(f"/updates/{SERVER_ID}")).text
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    rejected = (await client.get("/rejected")).text
    assert "<script>alert(&#39;parked&#39;)" not in rejected and "<script>alert('parked')" not in rejected
    assert "&lt;script&gt;alert(&#39;parked&#39;)&lt;/script&gt;" in rejected
    assert "&lt;b&gt;bold&lt;/b&gt;" in rejected


async def test_every_response_carries_the_security_headers(client):
    for path in ("/", f"/updates/{SERVER_ID}", "/rejected", "/api/updates", "/nope", "/static/dashboard.js"):
        response = await client.get(path)
        csp = response.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["referrer-policy"] == "no-referrer"


async def test_the_rejected_list_and_live_state(client):
    rejected = (await client.get("/api/rejected")).json()
    assert rejected["total"] == 1 and rejected["items"][0]["reason"].startswith("malformed")
    state = (await client.get("/api/state")).json()
    assert state == {"position": 12 + 5 + 3 * 11, "version": 5, "rejected": 1}  # 4 batches, 1 rejection


async def test_an_update_page_shows_batches_abort_not_run_and_its_retry(tmp_path):
    from bus.contract.events import UpdateCompleted, UpdateRequested
    from bus.contract.registry import make_envelope
    from bus.handling import child_envelope
    from tests.projection_support import FILES, control_events

    url = f"sqlite:///{tmp_path / 'control.db'}"
    engine = migrated_engine(url)
    flow = hot_server_flow(complete=False)
    request = flow[4][0]
    control = control_events(request)
    done = at(child_envelope(request, UpdateCompleted(
        update_type="hot_server", version="004200000", final_result=False, final_data="aborted after batch 1",
        outcome="aborted", not_run=["127.0.0.21", "127.0.0.31"], ok_count=3, failed_count=1,
    ), source="hotupdate/ops_executor/ops1", offset=50), 50)
    retry = make_envelope(
        UpdateRequested(update_type="hot_server", version="004200000", ops_manager="ops1", update_file_list=FILES,
                        requested_by="bob", update_server_list={"game": {"127.0.0.11": ["qq_1"]}},
                        parent_id=request.updateid, relation="retry_failed"),
        source="hotupdate/cmdb", updateid="retry-1", project="ssss", area="cn", sequence=1,
    )
    ingest_batch(engine, [*flow[:8], item(control["batch1"]), item(control["abort"]), item(done), item(retry)])
    engine.dispose()
    app = create_app(url, access=dashboard_access())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://dash",
                                 headers=DASHBOARD_AUTH) as client:
        page = (await client.get(f"/updates/{request.updateid}")).text
        assert 'class="status status-aborted"' in page
        assert 'id="abort"' in page and "wrong build" in page
        assert 'id="not-run"' in page and 'data-batch="1"' in page
        assert 'href="/updates/retry-1"' in page
        assert page.count('class="mark not-run"') == 3 + 2  # 3 servers and 2 IPs never started
        child = (await client.get("/updates/retry-1")).text
        assert f'href="/updates/{request.updateid}"' in child and "retry failed of" in child
        detail = (await client.get(f"/api/updates/{request.updateid}")).json()
        assert detail["servers"]["not_run"] == 3 and detail["ips"]["not_run"] == 2
        assert [b["next"] for b in detail["batch_list"]] == ["await_confirm"]
        assert (await client.get("/api/updates", params={"status": "aborted"})).json()["total"] == 1
    app.state.engine.dispose()


@pytest.mark.parametrize("read_threads", [1, 3])
def test_requests_read_the_database_read_threads_at_a_time(tmp_path, monkeypatch, read_threads):
    # Threads reading together only take turns for the interpreter lock (bench.dashboard): the
    # dashboard lets ``read_threads`` requests read at once and queues the others.
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    from fastapi.testclient import TestClient

    from projections import queries

    url = f"sqlite:///{tmp_path / 'projection.db'}"
    migrated_engine(url).dispose()
    real = queries.list_updates
    lock, inside, most = threading.Lock(), [0], [0]

    def slow_list(session, filters, projects=None):
        with lock:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        time.sleep(0.1)
        with lock:
            inside[0] -= 1
        return real(session, filters, projects)

    monkeypatch.setattr(queries, "list_updates", slow_list)
    app = create_app(url, access=dashboard_access(), read_threads=read_threads)
    with TestClient(app, headers=DASHBOARD_AUTH) as client, ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda page: client.get(f"/api/updates?page={page}"), range(1, 7)))
    app.state.engine.dispose()
    assert [a.status_code for a in answers] == [200] * 6
    assert most[0] == read_threads


def test_read_threads_must_be_positive():
    with pytest.raises(ValueError, match="read_threads must be at least 1"):
        create_app("sqlite://", access=dashboard_access(), read_threads=0)
