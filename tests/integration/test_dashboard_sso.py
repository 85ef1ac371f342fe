"""Single sign-on: the dashboard over HTTPS signs people in through a real OpenID Connect provider
(panva/oidc-provider under node, on loopback), authorization-code flow with PKCE; the provider's
groups claim decides which projects each sees."""

from __future__ import annotations

import html
import re
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from domain.config import DashboardConfig, DashboardUser, OidcConfig
from projections.dashboard import create_app
from projections.ingest import ingest_batch
from tests.https_support import self_signed
from tests.oidc_support import CLIENT_ID, CLIENT_SECRET, OidcProvider
from tests.projection_support import LiveServer, hot_server_flow, migrated_engine

SSSS_ID = "350cf0ef-c12e-4bcc-d0df-369a09a4a357"
SNQXZ_IDS = [f"other-{n}" for n in range(3)]
ACCOUNTS = {"ana": ["ssss-ops"], "carol": ["auditors"], "bob": ["unknown-group"]}
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


@pytest.fixture
def site(tmp_path):
    """(dashboard URL, TLS files, database URL): the dashboard over HTTPS, signing in through the provider."""
    url = f"sqlite:///{tmp_path / 'projection.db'}"
    engine = migrated_engine(url)
    ingest_batch(engine, hot_server_flow())
    for updateid in SNQXZ_IDS:
        ingest_batch(engine, hot_server_flow(updateid=updateid, project="snqxz", area="tw", failing=()))
    engine.dispose()
    tls = self_signed(tmp_path)
    secret = tmp_path / "client-secret"
    secret.write_text(CLIENT_SECRET)
    port = _free_port()
    base = f"https://127.0.0.1:{port}"
    with OidcProvider([f"{base}/auth/callback"], ACCOUNTS) as provider:
        access = DashboardConfig(
            users={"ana": DashboardUser(projects=[])},
            groups={"ssss-ops": ["ssss"], "auditors": ["*"]},
            oidc=OidcConfig(issuer=provider.issuer, client_id=CLIENT_ID, client_secret_file=secret,
                            scopes=["openid", "profile", "groups"]),
        )
        app = create_app(url, access=access)
        with LiveServer(app, port=port, ssl_certfile=str(tls.certfile), ssl_keyfile=str(tls.keyfile)) as server:
            assert server.url == base
            yield base, tls, provider
        app.state.engine.dispose()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _sign_in(client: httpx.Client, base: str, login: str, start: str = "/") -> httpx.Response:
    """Sign in as ``login`` the way a browser does, from a page of the dashboard to it again."""
    first = client.get(base + start)
    assert first.status_code == 303 and first.headers["location"].startswith("/login?next=")
    to_provider = client.get(base + first.headers["location"])
    assert to_provider.status_code == 302
    query = parse_qs(urlsplit(to_provider.headers["location"]).query)
    assert query["code_challenge_method"] == ["S256"] and query["code_challenge"][0]  # PKCE
    assert query["response_type"] == ["code"] and query["state"][0] and query["nonce"][0]
    form = client.get(to_provider.headers["location"], follow_redirects=True)
    action = html.unescape(re.search(r'<form[^>]*action="([^"]+)"', form.text).group(1))
    return client.post(str(form.url.join(action)), data={"prompt": "login", "login": login, "password": "pw"},
                       follow_redirects=True)


def test_a_user_of_an_sso_group_signs_in_with_pkce_and_sees_only_the_granted_project(site):
    base, tls, _provider = site
    with httpx.Client(verify=tls.client_context(), timeout=10) as client:
        landed = _sign_in(client, base, "ana", start=f"/updates/{SSSS_ID}")
        assert landed.status_code == 200 and str(landed.url) == f"{base}/updates/{SSSS_ID}"
        set_cookie = next(r.headers["set-cookie"] for r in landed.history if r.url.path == "/auth/callback")
        assert set_cookie.startswith("hotupdate_dashboard=")
        flags = {f.strip().lower() for f in set_cookie.split(";")[1:]}
        assert {"secure", "httponly", "samesite=lax"} <= flags
        assert 'id="viewer">ana' in landed.text

        listed = client.get(f"{base}/api/updates").json()
        assert [u["updateid"] for u in listed["items"]] == [SSSS_ID]
        assert client.get(f"{base}/api/updates/{SNQXZ_IDS[0]}").status_code == 404
        page = client.get(f"{base}/")
        assert SSSS_ID in page.text and not any(u in page.text for u in SNQXZ_IDS)

        client.get(f"{base}/logout")
        assert client.get(f"{base}/api/updates").status_code == 401
        assert client.get(f"{base}/").status_code == 303


def test_an_auditor_group_sees_every_project(site):
    base, tls, _provider = site
    with httpx.Client(verify=tls.client_context(), timeout=10) as client:
        assert _sign_in(client, base, "carol").status_code == 200
        listed = client.get(f"{base}/api/updates").json()
        assert sorted(u["updateid"] for u in listed["items"]) == sorted([SSSS_ID, *SNQXZ_IDS])


def test_a_provider_user_granted_no_project_is_refused_a_session(site):
    base, tls, _provider = site
    with httpx.Client(verify=tls.client_context(), timeout=10) as client:
        landed = _sign_in(client, base, "bob")
        assert landed.status_code == 403 and "granted no project" in landed.text
        assert client.get(f"{base}/api/updates").status_code == 401


def test_a_callback_the_dashboard_did_not_start_is_refused(site):
    base, tls, _provider = site
    with httpx.Client(verify=tls.client_context(), timeout=10) as client:
        forged = client.get(f"{base}/auth/callback", params={"code": "stolen-code", "state": "guessed"})
        assert forged.status_code == 401 and "Sign-in failed" in forged.text
        assert "set-cookie" not in forged.headers or "viewer" not in forged.headers["set-cookie"]
        assert client.get(f"{base}/api/updates").status_code == 401


def test_the_dashboard_refuses_plain_http_on_its_https_port(site):
    base, _tls, _provider = site
    with pytest.raises(httpx.HTTPError):
        httpx.get(base.replace("https://", "http://") + "/api/state", timeout=5)


@pytest.mark.browser
def test_a_browser_signs_in_through_the_provider_and_sees_its_projects_live(site):
    from playwright.sync_api import sync_playwright

    base, _tls, _provider = site
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            # the certificate is self-signed for this test: the browser is told to accept it
            context = browser.new_context(ignore_https_errors=True, viewport={"width": 1400, "height": 1000})
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(base + "/")
            page.fill('input[name="login"]', "ana")  # the provider's own sign-in form
            page.fill('input[name="password"]', "pw")
            page.click('button[type="submit"]')
            page.wait_for_selector(f'tr[data-update="{SSSS_ID}"]', timeout=10_000)
            assert page.url == base + "/"
            assert page.locator("tr[data-update]").count() == 1
            assert page.locator("#viewer").inner_text().startswith("ana")
            page.wait_for_selector("#live-indicator.on", timeout=5000)  # the stream took the session
            cookies = {c["name"]: c for c in context.cookies(base)}
            session = cookies["hotupdate_dashboard"]
            assert session["httpOnly"] and session["secure"] and session["sameSite"] == "Lax"
            assert page.evaluate("document.cookie") == ""  # not readable by scripts
            assert errors == []
        finally:
            browser.close()
