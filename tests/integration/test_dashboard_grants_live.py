"""The live stream, served by uvicorn, tells a reader only of the projects they are granted."""

from __future__ import annotations

import contextlib
import json
import threading
import time

import httpx

from domain.config import DashboardConfig, DashboardUser
from projections.dashboard import create_app
from projections.dashboard.access import hash_token
from projections.ingest import ingest_batch
from tests.projection_support import LiveServer, hot_server_flow, migrated_engine

ANA, AUDITOR = "ana-token-granted-ssss-only", "auditor-token-granted-everything"


def _listen(base: str, token: str, found: list) -> None:
    """Collect (event name, data) from the stream as ``token``'s reader until the server stops."""
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=base, timeout=10, headers=headers) as client:
        state = client.get("/api/state").json()
        # the server stopping cuts the stream mid-response
        with contextlib.suppress(httpx.RemoteProtocolError), client.stream(
                "GET", "/api/stream", params=state) as response:
            assert response.status_code == 200
            name = None
            for line in response.iter_lines():
                if line.startswith("event:"):
                    name = line.split(":", 1)[1].strip()
                elif line.startswith("data:"):
                    found.append((name, json.loads(line.split(":", 1)[1])))


def test_the_stream_names_only_the_granted_projects_updates(tmp_path):
    url = f"sqlite:///{tmp_path / 'projection.db'}"
    engine = migrated_engine(url)
    ssss, snqxz = hot_server_flow(complete=False), hot_server_flow(updateid="other-1", project="snqxz", area="tw")
    ingest_batch(engine, ssss[:3])
    access = DashboardConfig(users={"ana": DashboardUser(projects=["ssss"], token_sha256=hash_token(ANA)),
                                    "auditor": DashboardUser(projects=["*"], token_sha256=hash_token(AUDITOR))})
    app = create_app(url, access=access)
    with LiveServer(app) as server, httpx.Client(base_url=server.url, timeout=10) as client:
        assert client.get("/api/stream").status_code == 401
        seen: dict[str, list] = {ANA: [], AUDITOR: []}
        readers = [threading.Thread(target=_listen, args=(server.url, token, found), daemon=True)
                   for token, found in seen.items()]
        for reader in readers:
            reader.start()
        time.sleep(0.7)
        ingest_batch(engine, snqxz)  # another project's whole update
        time.sleep(1.0)
        ingest_batch(engine, ssss[3:5])  # then one of ana's
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not any(n == "change" for n, _ in seen[ANA]):
            time.sleep(0.05)
    for reader in readers:  # their streams end with the server
        reader.join(timeout=10)
    engine.dispose()
    ana_changes = [d["updates"] for n, d in seen[ANA] if n == "change"]
    auditor_changes = [d["updates"] for n, d in seen[AUDITOR] if n == "change"]
    assert ana_changes == [[ssss[0][0].updateid]]  # never told of snqxz's
    assert ["other-1"] in auditor_changes  # while the auditor was
