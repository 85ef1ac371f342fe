"""The dashboard served by uvicorn: the live stream, and real headless Chromium on its pages."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx
import pytest

from projections.dashboard import create_app
from projections.ingest import ingest_batch
from tests.projection_support import (
    DASHBOARD_AUTH,
    LiveServer,
    dashboard_access,
    hot_client_flow,
    hot_server_flow,
    ip_finished,
    item,
    migrated_engine,
)

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT = ROOT / "test-artifacts" / "dashboard-update.png"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


@pytest.fixture
def projection(tmp_path):
    url = f"sqlite:///{tmp_path / 'projection.db'}"
    engine = migrated_engine(url)
    yield url, engine
    engine.dispose()


def _read_until_change(response, found):
    """Collect (event, data, arrival time) from an SSE response up to the first ``change`` event."""
    name = None
    for line in response.iter_lines():
        if line.startswith("event:"):
            name = line.split(":", 1)[1].strip()
        elif line.startswith("data:"):
            found.append((name, json.loads(line.split(":", 1)[1]), time.monotonic()))
            if name == "change":
                return


def test_the_stream_names_the_changed_update_within_a_second(projection):
    url, engine = projection
    flow = hot_server_flow(complete=False)
    ingest_batch(engine, flow[:6])
    with LiveServer(create_app(url, access=dashboard_access())) as server, \
            httpx.Client(base_url=server.url, timeout=10, headers=DASHBOARD_AUTH) as client:
        state = client.get("/api/state").json()
        found: list = []
        with client.stream("GET", "/api/stream", params=state) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            reader = threading.Thread(target=_read_until_change, args=(response, found), daemon=True)
            reader.start()
            time.sleep(0.5)
            committed = time.monotonic()
            ingest_batch(engine, flow[6:8])
            reader.join(timeout=5)
        hello = found[0]
        assert hello[0] == "hello" and hello[1]["position"] == 6
        change = next((data, at) for name, data, at in found if name == "change")
        assert change[0]["updates"] == [flow[0][0].updateid] and change[0]["position"] == 8
        assert change[1] - committed < 1.0


@pytest.mark.browser
def test_the_pages_show_the_numbers_and_follow_new_events_without_reload(projection):
    from playwright.sync_api import sync_playwright

    url, engine = projection
    flow = hot_server_flow(complete=False)
    last_ip = flow[-1]
    updateid = flow[0][0].updateid
    nasty = ip_finished(flow[4][0], "127.0.0.12", "game", {"qq_3": False}, offset=20, minutes=20,
                        note="<script>window.__pwned = 1</script><img src=x onerror=alert(1)>")
    ingest_batch(engine, [*flow[:-1], item(nasty.model_copy(update={"id": "nasty-1"}))])

    with LiveServer(create_app(url, access=dashboard_access())) as server, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000}, extra_http_headers=DASHBOARD_AUTH)
            dialogs: list[str] = []
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))

            # the list: one update, 4 ok / 2 failed of 7 servers, 1 IP silent
            page.goto(server.url + "/")
            row = page.locator(f'tr[data-update="{updateid}"]')
            servers = row.locator('[data-field="servers"]')
            assert servers.get_attribute("data-ok") == "4" and servers.get_attribute("data-failed") == "2"
            assert servers.get_attribute("data-expected") == "7" and servers.get_attribute("data-pending") == "1"
            assert row.locator(".stage").inner_text() == "started"
            page.wait_for_selector("#live-indicator.on", timeout=5000)

            # a new update appears on the open list page
            ingest_batch(engine, hot_client_flow())
            page.wait_for_selector('tr[data-update="c1b2c3d4-0000-4000-8000-000000000001"]', timeout=2000)
            assert page.locator("#updates-total").inner_text() == "2"

            # the update's page
            page.goto(f"{server.url}/updates/{updateid}")
            page.evaluate("window.__sameDocument = true")
            card = page.locator('#card-servers [data-field="servers"]')
            assert (card.get_attribute("data-ok"), card.get_attribute("data-failed")) == ("4", "2")
            first_rows = page.locator("table.servers tbody tr")
            assert first_rows.nth(0).get_attribute("data-server") == "qq_1"
            assert first_rows.nth(0).get_attribute("class") == "failed"
            assert "更新失败,不执行erl命令" in first_rows.nth(0).inner_text()
            assert first_rows.nth(1).get_attribute("data-server") == "qq_3"
            assert "<script>window.__pwned = 1</script>" in first_rows.nth(1).inner_text()  # shown as text
            assert page.locator("table.events tbody tr").count() == len(flow)
            page.wait_for_selector("#live-indicator.on", timeout=5000)

            # the last IP reports: the open page follows without a reload, within a second
            committed = time.monotonic()
            ingest_batch(engine, [last_ip])
            page.wait_for_selector('#card-servers [data-field="servers"][data-ok="5"][data-pending="0"]',
                                   timeout=1000)
            latency = time.monotonic() - committed
            assert page.evaluate("window.__sameDocument") is True
            assert page.locator('table.servers tr[data-server="center_1"].ok').count() == 1
            assert page.locator("table.events tbody tr").count() == len(flow) + 1
            assert int(page.evaluate("document.body.dataset.refreshes")) >= 1

            assert page.evaluate("window.__pwned") is None and dialogs == [] and errors == []
            SCREENSHOT.parent.mkdir(exist_ok=True)
            page.screenshot(path=str(SCREENSHOT), full_page=True)
        finally:
            browser.close()
    assert latency < 1.0
    assert SCREENSHOT.stat().st_size > 10_000
