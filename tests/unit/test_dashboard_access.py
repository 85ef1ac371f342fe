"""Who may read the dashboard, and what each sees: every route refuses a request with no valid token
or session; a reader granted ssss sees ssss's updates, rejections and facets, and nothing of snqxz."""

from __future__ import annotations

import base64
import json
import time

import httpx
import itsdangerous
import pytest
from fastapi.routing import APIRoute

from domain.config import DashboardConfig, DashboardUser, OidcConfig, parse_config
from projections.dashboard import create_app
from projections.dashboard.access import Viewer, hash_token, token_viewer, viewer
from projections.dashboard.signin import SESSION_COOKIE
from projections.ingest import ingest_batch, record_rejection
from tests.projection_support import T0, hot_server_flow, migrated_engine

SSSS_ID = "350cf0ef-c12e-4bcc-d0df-369a09a4a357"
SNQXZ_IDS = [f"other-{n}" for n in range(3)]
ANA, AUDITOR = "ana-token-granted-ssss-only", "auditor-token-granted-everything"
SECRET = b"k" * 32
PUBLIC = {"/static/{name}", "/favicon.ico", "/login", "/auth/callback", "/logout"}  # sign-in, the script, the icon
# health and metrics: open, /metrics to loopback or its token (tests/unit/test_dashboard_observability.py)
PUBLIC |= {"/healthz", "/readyz", "/metrics"}


def _access(oidc: bool = False) -> DashboardConfig:
    return DashboardConfig(
        users={"ana": DashboardUser(projects=["ssss"], token_sha256=hash_token(ANA)),
               "audit-bot": DashboardUser(groups=["auditors"], token_sha256=hash_token(AUDITOR))},
        groups={"auditors": ["*"]},
        oidc=OidcConfig(issuer="https://sso.invalid", client_id="dash") if oidc else None,
    )


@pytest.fixture
def database_url(tmp_path):
    url = f"sqlite:///{tmp_path / 'projection.db'}"
    engine = migrated_engine(url)
    ingest_batch(engine, hot_server_flow())
    snqxz = [hot_server_flow(updateid=u, project="snqxz", area="tw", failing=()) for u in SNQXZ_IDS]
    for flow in snqxz:
        ingest_batch(engine, flow)
    park = {"service": "projection", "message_id": None, "attempt": 1, "parked_at": T0}
    record_rejection(engine, reason="malformed: not JSON", body=b"<ssss junk>", routing_key="ssss.cn.ip.finished.v1",
                     **park)
    record_rejection(engine, reason="malformed: not JSON", body=b"<snqxz junk>",
                     routing_key="snqxz.tw.ip.finished.v1", **park)
    record_rejection(engine, reason="invalid: snqxz's own", body=snqxz[0][4][0].to_bytes(),
                     routing_key="snqxz.tw.ip.finished.v1", **park)
    engine.dispose()
    return url


async def _client(url: str, oidc: bool = False, **headers: str):
    app = create_app(url, access=_access(oidc), session_secret=SECRET)
    return app, httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="https://dash", headers=headers)


def _routes(app) -> list[str]:
    """Every GET route that shows something, its path parameter filled in."""
    paths = [r.path for r in app.routes if isinstance(r, APIRoute) and r.path not in PUBLIC]
    assert {"/", "/updates/{updateid}", "/rejected", "/api/updates", "/api/updates/{updateid}", "/api/rejected",
            "/api/state", "/api/stream"} <= set(paths)
    return [p.replace("{updateid}", SSSS_ID) for p in paths]


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer not-a-configured-token"},
                                     {"Authorization": f"Basic {ANA}"}], ids=["none", "wrong-token", "not-bearer"])
async def test_every_page_and_api_route_refuses_a_request_without_a_valid_token(database_url, headers):
    app, client = await _client(database_url, **headers)
    async with client:
        for path in _routes(app):
            response = await client.get(path)
            if path.startswith("/api/"):
                assert response.status_code == 401, path
                assert response.headers["www-authenticate"] == "Bearer"
            else:  # no single sign-on configured: a page saying how to get in
                assert response.status_code == 401 and "sign" in response.text.lower(), path
            assert SSSS_ID not in response.text and "snqxz" not in response.text, path
            assert response.headers["x-frame-options"] == "DENY"  # refusals carry the security headers too
    app.state.engine.dispose()


async def test_pages_send_an_unauthenticated_browser_to_single_sign_on_and_back(database_url):
    app, client = await _client(database_url, oidc=True)
    async with client:
        for path in _routes(app):
            response = await client.get(path + "?page=2")
            if path.startswith("/api/"):
                assert response.status_code == 401, path
            else:
                assert response.status_code == 303, path
                assert response.headers["location"] == "/login?" + httpx.QueryParams(next=f"{path}?page=2").__str__()
    app.state.engine.dispose()


async def test_a_token_granted_ssss_sees_ssss_and_nothing_of_snqxz(database_url):
    app, client = await _client(database_url, Authorization=f"Bearer {ANA}")
    async with client:
        listed = (await client.get("/api/updates")).json()
        assert [u["updateid"] for u in listed["items"]] == [SSSS_ID] and listed["total"] == 1
        assert (await client.get("/api/updates", params={"project": "snqxz"})).json()["total"] == 0
        assert (await client.get(f"/api/updates/{SSSS_ID}")).status_code == 200
        for other in SNQXZ_IDS:
            assert (await client.get(f"/api/updates/{other}")).status_code == 404
            page = await client.get(f"/updates/{other}")
            assert page.status_code == 404 and "snqxz" not in page.text
        rejected = (await client.get("/api/rejected")).json()
        assert [r["routing_key"] for r in rejected["items"]] == ["ssss.cn.ip.finished.v1"] and rejected["total"] == 1
        for path in ("/", "/rejected", f"/updates/{SSSS_ID}"):
            page = await client.get(path)
            assert page.status_code == 200 and "snqxz" not in page.text and SNQXZ_IDS[0] not in page.text, path
            assert 'id="rejected-count" class="badge alert" data-live-region>1<' in page.text
            assert 'id="viewer">ana' in page.text
    app.state.engine.dispose()


async def test_a_token_granted_every_project_through_a_group_sees_them_all(database_url):
    app, client = await _client(database_url, Authorization=f"Bearer {AUDITOR}")
    async with client:
        assert (await client.get("/api/updates")).json()["total"] == 1 + len(SNQXZ_IDS)
        assert (await client.get("/api/rejected")).json()["total"] == 3
        assert (await client.get(f"/api/updates/{SNQXZ_IDS[0]}")).status_code == 200
    app.state.engine.dispose()


def _session_cookie(data: dict, key: bytes) -> str:
    """A session cookie as Starlette's SessionMiddleware signs it."""
    payload = base64.b64encode(json.dumps(data).encode())
    return itsdangerous.TimestampSigner(key.hex()).sign(payload).decode()


async def test_a_session_cookie_not_signed_by_the_dashboard_is_ignored(database_url):
    app, client = await _client(database_url)
    forged = _session_cookie({"viewer": {"name": "ana", "groups": ["auditors"], "until": time.time() + 3600}},
                             b"an attacker's key, not the dashboard's")
    async with client:
        client.cookies.set(SESSION_COOKIE, forged)
        assert (await client.get("/api/updates")).status_code == 401
    app.state.engine.dispose()


async def test_a_session_ends_when_its_time_is_up_even_if_the_cookie_is_kept(database_url):
    app, client = await _client(database_url)
    async with client:
        client.cookies.set(SESSION_COOKIE, _session_cookie(
            {"viewer": {"name": "ana", "groups": [], "until": time.time() + 3600}}, SECRET))
        assert (await client.get("/api/updates")).json()["total"] == 1  # the signed session reads ssss
        client.cookies.set(SESSION_COOKIE, _session_cookie(
            {"viewer": {"name": "ana", "groups": [], "until": time.time() - 1}}, SECRET))
        ended = await client.get("/api/updates")
        assert ended.status_code == 401 and "ended" in ended.json()["detail"]
    app.state.engine.dispose()


def test_grants_combine_the_users_own_its_groups_and_the_providers_groups():
    access = DashboardConfig(users={"ana": DashboardUser(projects=["ssss"], groups=["ops-a"])},
                             groups={"ops-a": ["snqxz"], "sso-b": ["xyz"], "auditors": ["*"]})
    assert viewer(access, "ana") == Viewer("ana", frozenset({"ssss", "snqxz"}))
    assert viewer(access, "ana", ["sso-b"]).projects == frozenset({"ssss", "snqxz", "xyz"})
    assert viewer(access, "someone", ["auditors"]).projects is None  # every project
    assert not viewer(access, "someone", ["not-configured"]).granted_anything


def test_a_token_names_its_user_and_nothing_else_matches():
    access = _access()
    assert token_viewer(access, ANA) == Viewer("ana", frozenset({"ssss"}))
    assert token_viewer(access, AUDITOR) == Viewer("audit-bot", None)
    assert token_viewer(access, "") is None and token_viewer(access, ANA + "x") is None


def test_the_configuration_refuses_a_grant_of_an_unknown_project(tmp_path):
    from domain.config import ConfigError

    raw = {"projects": {"ssss": {"areas": {}}}, "dashboard": {"groups": {"ops": ["ssss", "nope"]}}}
    with pytest.raises(ConfigError, match=r"dashboard.groups.ops: unknown project 'nope'"):
        parse_config(raw, tmp_path / "c.yaml")


@pytest.mark.parametrize("target", ["//evil.example", "/\\evil.example", "/\t/evil.example", "/\n/evil.example",
                                    "https://evil.example/", "evil.example", "/ /x", ""])
def test_after_sign_in_the_browser_goes_back_only_to_a_page_of_the_dashboard(target):
    from projections.dashboard.signin import local_path

    assert local_path(target) == "/"
    assert local_path("/updates/x?servers_offset=200") == "/updates/x?servers_offset=200"
