"""The dashboard in real headless Chromium: progress bars that move during a live update, a layout that
holds at a phone's width, and no accessibility violations (axe-core, WCAG 2 A/AA) on any page."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

from projections.dashboard import create_app
from projections.ingest import ingest_batch, record_rejection
from tests.axe_support import describe, violations
from tests.projection_support import (
    DASHBOARD_AUTH,
    T0,
    Item,
    LiveServer,
    dashboard_access,
    hot_client_flow,
    hot_server_flow,
    item,
    migrated_engine,
)

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 900}

SERVER_RUNNING = "350cf0ef-c12e-4bcc-d0df-369a09a4a357"
SERVER_DONE = "5e7e7000-0000-4000-8000-00000000d0e1-a-long-id-that-must-wrap"
CLIENT_DONE = "c1b2c3d4-0000-4000-8000-000000000001"
CLIENT_RUNNING = "c1b2c3d4-0000-4000-8000-0000000000aa"
GONE = "9a9e0000-0000-4000-8000-000000000000"
LONG_PATH = "/data/version_update/server/ssss/cn/004200000/reloadfiles/" + "deeply/nested/" * 8 + "role_server.beam"


def later(items: list[Item], minutes: float) -> list[Item]:
    """``items`` with their event times moved ``minutes`` on (their spacing kept)."""
    return [item(env.model_copy(update={"time": env.time + timedelta(minutes=minutes)})) for env, _ in items]


def seed(engine) -> None:
    """Two running updates (hot_server, hot_client), two finished ones on other days, and rejections
    naming an update the projection has and one it never saw."""
    ingest_batch(engine, hot_server_flow(complete=False)[:-2])
    ingest_batch(engine, later(hot_server_flow(updateid=SERVER_DONE), -60 * 24))
    ingest_batch(engine, later(hot_client_flow(), 60 * 24 * 2))
    ingest_batch(engine, later(hot_client_flow(updateid=CLIENT_RUNNING)[:3], 30))
    for n, updateid in enumerate((GONE, SERVER_RUNNING)):
        body = json.dumps({"id": f"e{n}", "updateid": updateid, "data": {"path": LONG_PATH, "note": "更新失败"}},
                          ensure_ascii=False).encode()
        record_rejection(engine, service="projection", reason=f"invalid: {LONG_PATH} 无效", body=body,
                         routing_key="ssss.cn.ip.finished.v1", message_id=f"m-{n}", attempt=1, parked_at=T0)


@pytest.fixture
def projection(tmp_path):
    url = f"sqlite:///{tmp_path / 'projection.db'}"
    engine = migrated_engine(url)
    yield url, engine
    engine.dispose()


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def _progress(page, selector: str) -> tuple[int, int, float]:
    """(done, expected, width of the ok part in %) of the progress bar at ``selector``."""
    bar = page.locator(selector)
    ok_width = float(bar.locator("rect.ok").get_attribute("width") or 0)
    return int(bar.get_attribute("aria-valuenow") or -1), int(bar.get_attribute("aria-valuemax") or -1), ok_width


def test_the_progress_bars_move_as_a_live_update_reports(projection, browser):
    url, engine = projection
    flow = hot_server_flow()
    ingest_batch(engine, flow[:6])  # requested and started: 7 servers expected, none reported
    with LiveServer(create_app(url, access=dashboard_access())) as server:
        context = browser.new_context(viewport=DESKTOP, extra_http_headers=DASHBOARD_AUTH)
        detail, listing = context.new_page(), context.new_page()
        detail.goto(f"{server.url}/updates/{SERVER_RUNNING}")
        listing.goto(server.url + "/")
        big = ".progress-big [role=progressbar]"
        row = f'tr[data-update="{SERVER_RUNNING}"] [role=progressbar]'
        assert _progress(detail, big) == (0, 7, 0.0)
        assert _progress(listing, row)[:2] == (0, 7)
        assert listing.locator(f'tr[data-update="{SERVER_RUNNING}"] time.running-for').count() == 1
        detail.wait_for_selector("#live-indicator.on", timeout=5000)
        listing.wait_for_selector("#live-indicator.on", timeout=5000)

        seen = []
        for n, (done, ok) in enumerate([(2, 1), (4, 3), (6, 5), (7, 6)]):
            ingest_batch(engine, [flow[6 + n]])  # one IP reports
            detail.wait_for_selector(f'{big}[aria-valuenow="{done}"]', timeout=3000)
            listing.wait_for_selector(f'{row}[aria-valuenow="{done}"]', timeout=3000)
            seen.append(_progress(detail, big))
            assert seen[-1][2] == pytest.approx(100 * ok / 7, abs=0.01)  # the green part grows
            if n == 1:
                ARTIFACTS.mkdir(exist_ok=True)
                detail.screenshot(path=str(ARTIFACTS / "dashboard-progress.png"), full_page=True)
                listing.screenshot(path=str(ARTIFACTS / "dashboard-progress-list.png"), full_page=True)
        assert [s[0] for s in seen] == [2, 4, 6, 7] and seen[0][2] < seen[-1][2]
        assert "1 failed" in detail.locator(".progress-big").inner_text()

        ingest_batch(engine, flow[10:])  # completed: no longer running, a duration instead
        listing.wait_for_selector(f'tr[data-update="{SERVER_RUNNING}"]:not(.running)', timeout=3000)
        assert listing.locator(f'tr[data-update="{SERVER_RUNNING}"] time.running-for').count() == 0
        assert listing.locator(f'tr[data-update="{SERVER_RUNNING}"] .took').inner_text() == "5 min"
        detail.wait_for_selector('li.step.failed[data-stage="completed"]', timeout=3000)
        assert int(detail.evaluate("document.body.dataset.refreshes")) >= 5  # followed without a reload
        context.close()


def _pages() -> dict[str, str]:
    return {
        "list": "/",
        "hot_server update (running)": f"/updates/{SERVER_RUNNING}",
        "hot_server update (done)": f"/updates/{SERVER_DONE}",
        "hot_client update (done)": f"/updates/{CLIENT_DONE}",
        "hot_client update (running)": f"/updates/{CLIENT_RUNNING}",
        "rejected": "/rejected",
        "no such update": "/updates/no-such-update",
    }


_CJK_UNMARKED = """() => {
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  const bad = [];
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    if (/[\\u3400-\\u9fff]/.test(n.nodeValue)) {
      const marked = n.parentElement.closest('[lang]');
      if (!marked || !marked.lang.startsWith('zh')) bad.push(n.nodeValue.trim().slice(0, 40));
    }
  }
  return bad;
}"""


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "390px"])
def test_every_page_fits_the_width_and_has_no_accessibility_violations(projection, browser, viewport):
    url, engine = projection
    seed(engine)
    with LiveServer(create_app(url, access=dashboard_access())) as server:
        signed_in = browser.new_context(viewport=viewport, extra_http_headers=DASHBOARD_AUTH, bypass_csp=True)
        anonymous = browser.new_context(viewport=viewport, bypass_csp=True)
        found: dict[str, str] = {}
        missing: list[str] = []
        pages = [(signed_in, name, path) for name, path in _pages().items()]
        for context, name, path in [*pages, (anonymous, "sign-in", "/")]:
            page = context.new_page()
            page.on("response", lambda r: missing.append(r.url) if r.status == 404 and "/updates/" not in r.url
                    else None)
            response = page.goto(server.url + path)
            assert response is not None
            assert response.status == {"sign-in": 401, "no such update": 404}.get(name, 200), name
            page.wait_for_load_state("networkidle")
            width, inner = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
            assert width <= inner, f"{name} scrolls sideways at {inner} px: {width} px wide"
            assert page.evaluate(_CJK_UNMARKED) == [], f"{name}: Chinese text not marked lang=zh"
            problems = violations(page)
            if problems:
                found[name] = describe(problems)
            if viewport is PHONE and name in ("list", "hot_server update (running)"):
                ARTIFACTS.mkdir(exist_ok=True)
                page.screenshot(path=str(ARTIFACTS / f"dashboard-{name.split()[0]}-390.png"), full_page=True)
            page.close()
        assert not found, "axe-core found violations:\n" + "\n".join(f"{k}:\n{v}" for k, v in found.items())
        assert missing == []  # the favicon among them
        signed_in.close()
        anonymous.close()


def test_pages_say_what_failed_in_words_and_link_only_to_updates_that_exist(projection, browser):
    url, engine = projection
    seed(engine)
    with LiveServer(create_app(url, access=dashboard_access())) as server:
        context = browser.new_context(viewport=DESKTOP, extra_http_headers=DASHBOARD_AUTH)
        page = context.new_page()

        page.goto(f"{server.url}/updates/{CLIENT_DONE}")
        failed_step = page.locator('li.step.failed[data-stage="completed"]')
        assert "✕" in failed_step.inner_text() and "failed" in failed_step.inner_text()
        assert page.locator("table.cdn").count() == 1 and page.locator("table.servers").count() == 0
        assert page.locator(".progress-big [role=progressbar]").get_attribute("data-unit") == "cdn_dirs"
        assert page.locator("#chart-finish svg[role=img]").count() == 1

        page.goto(server.url + "/rejected")
        assert page.locator(f'a[href="/updates/{GONE}"]').count() == 0
        assert "not in the projection" in page.locator(f'tr:has-text("{GONE[:13]}")').inner_text()
        assert page.locator(f'a[href="/updates/{SERVER_RUNNING}"]').count() == 1

        page.goto(server.url + "/")
        order = page.locator("table.updates tbody tr").evaluate_all("rows => rows.map(r => r.dataset.update)")
        assert set(order[:2]) == {SERVER_RUNNING, CLIENT_RUNNING}  # running first
        client_row = page.locator(f'tr[data-update="{CLIENT_RUNNING}"] td.progress-cell').inner_text()
        assert "CDN dirs" in client_row and "servers" not in client_row and "of 0" not in client_row
        assert page.locator("#chart-per-day svg[role=img]").get_attribute("aria-labelledby") == "chart-per-day-summary"
        icon = page.request.get(server.url + "/favicon.ico")
        assert icon.status == 200 and icon.headers["content-type"] == "image/x-icon"
        context.close()
