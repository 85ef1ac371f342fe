"""The dashboard's /healthz, /readyz and /metrics: open without sign-in, /metrics only to loopback or its
token, and nothing in them names an update."""

from __future__ import annotations

import time

import httpx

from projections.dashboard import create_app
from projections.dashboard.access import hash_token
from tests.unit.test_dashboard_access import SECRET, SSSS_ID, _access, database_url  # noqa: F401 - the fixture

TOKEN = "scraper-token"


def _client(url: str, client_host: str) -> httpx.AsyncClient:
    app = create_app(url, access=_access(), session_secret=SECRET, metrics_token_sha256=hash_token(TOKEN))
    transport = httpx.ASGITransport(app=app, client=(client_host, 40000))
    return httpx.AsyncClient(transport=transport, base_url="https://dash")


async def test_health_answers_without_sign_in_and_metrics_show_the_projection_lag(database_url) -> None:  # noqa: F811
    async with _client(database_url, "127.0.0.1") as client:
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        ready = await client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["checks"] == {"database": True}
        metrics = await client.get("/metrics")
        assert metrics.status_code == 200
        newest = next(line for line in metrics.text.splitlines()
                      if line.startswith("hotupdate_projection_newest_event_timestamp_seconds "))
        assert 0 < float(newest.split()[1]) < time.time()
        assert SSSS_ID not in metrics.text


async def test_metrics_refuse_a_remote_caller_without_the_token(database_url) -> None:  # noqa: F811
    async with _client(database_url, "192.0.2.9") as client:
        assert (await client.get("/metrics")).status_code == 403
        assert (await client.get("/metrics", headers={"Authorization": "Bearer wrong"})).status_code == 403
        assert (await client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})).status_code == 200
        assert (await client.get("/readyz")).status_code == 200  # readiness says nothing: open to all
