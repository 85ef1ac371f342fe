"""Refresh the README's dashboard screenshots (docs/img/dashboard-*.png) from a made-up but lifelike day.

A running hot_server update of 40 IPs, 28 of them reported (one with a failed server), and two
weeks of finished updates behind it, served by the real dashboard over a scratch SQLite
projection and photographed by headless Chromium at a desktop's width and a phone's (390 px).

    PYTHONPATH=. .venv/bin/python scripts/dashboard_screenshots.py [OUTPUT_DIR]
"""

from __future__ import annotations

import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench.projection_events import hot_client_template, hot_server_template
from bus.contract.envelope import Envelope
from bus.contract.registry import DEFAULT_REGISTRY
from projections.dashboard import create_app
from projections.ingest import ingest_batch
from tests.projection_support import DASHBOARD_AUTH, LiveServer, dashboard_access, hot_server_flow, migrated_engine

RUNNING = "7d3f2a10-5b8e-4c1d-9f60-2e4b8a1c0d37"


def _moved(envs: list[Envelope], start: datetime, spacing: dict[int, float] | None = None) -> list[Envelope]:
    """``envs`` moved to begin at ``start``; ``spacing`` (index → seconds after start) overrides some."""
    base = envs[0].time
    return [e.model_copy(update={"time": start + timedelta(seconds=(spacing or {}).get(n, (e.time - base)
                                                                                     .total_seconds()))})
            for n, e in enumerate(envs)]


def seed(url: str, now: datetime) -> None:
    engine = migrated_engine(url)
    batches: list[list[Envelope]] = []
    for day in range(1, 14):  # finished updates over the past two weeks, a few a day, most of them fine
        for k in range(day * 7 % 4 + 1):
            updateid = f"{day:04d}{k:04d}-0000-4000-8000-000000000000"
            if k % 3 == 2:
                batches.append(_moved(hot_client_template(updateid), now - timedelta(days=day, hours=k)))
            else:
                flow = hot_server_flow(updateid, project="ssss" if k % 2 else "snqxz",
                                       failing=("qq_1",) if (day + k) % 4 == 0 else ())
                batches.append(_moved([e for e, _ in flow], now - timedelta(days=day, hours=k)))
    # the running one: 40 IPs of 5 servers, started 4 minutes ago, 28 IPs reported so far
    envs = hot_server_template(ips=40, servers=5, updateid=RUNNING)
    ip_events = [n for n, e in enumerate(envs) if e.type == "hotupdate.ip.finished.v1"]
    spacing = {n: 5 * 60 + 8 + (i ** 1.6) * 1.1 for i, n in enumerate(ip_events)}
    spacing.update({n: float(n) * 60 for n in range(6)})
    running = _moved(envs, now - timedelta(minutes=4, seconds=5 * 60 + 8), spacing)
    batches.append(running[:6] + [running[n] for n in ip_events[:28]])
    for envs in batches:
        ingest_batch(engine, [(e, DEFAULT_REGISTRY.decode(e)) for e in envs])
    engine.dispose()


def main(out: Path) -> None:
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'projection.db'}"
        seed(url, datetime.now(UTC).replace(microsecond=0))
        with LiveServer(create_app(url, access=dashboard_access())) as server, sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu"])
            for name, path, viewport in (("update", f"/updates/{RUNNING}", {"width": 1280, "height": 1000}),
                                         ("list", "/", {"width": 1280, "height": 900}),
                                         ("update-390", f"/updates/{RUNNING}", {"width": 390, "height": 844})):
                page = browser.new_page(viewport=viewport, extra_http_headers=DASHBOARD_AUTH)
                page.goto(server.url + path)
                page.wait_for_selector("#live-indicator.on", timeout=5000)
                page.screenshot(path=str(out / f"dashboard-{name}.png"))
                page.close()
            browser.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("docs/img"))
