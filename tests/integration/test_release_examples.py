"""The release examples of docs/publishing.md (plain pika, Node.js amqplib) announce for real.

Each runs as its own process, logged in as a provisioned team user granted ``release.announced``,
against the real broker and a running CMDB; ssss pulls announced releases by itself, so each
announcement becomes a recorded release and a *pull requested* from the CMDB.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from bus.contract.envelope import Envelope
from bus.contract.events import PullRequested
from bus.topology import binding
from producers.cmdb.app import run as run_cmdb
from producers.cmdb.auth import hash_token
from producers.cmdb.bootstrap import bootstrap
from tests.busprobe import Probe
from tests.cmdb_support import TOKENS, auth
from tests.identity_support import Provisioned, provisioned
from tests.integration.test_releases import _free_port, _until

pytestmark = [pytest.mark.rabbit]
EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"
NODE_DIR = EXAMPLES / "node"


def _adjust(raw: dict[str, Any], team: str) -> None:
    raw["broker"]["teams"] = {team: {"projects": ["ssss"], "events": ["release.announced"]}}
    raw["projects"]["ssss"]["auto_pull_on_release"] = True
    raw["cmdb"]["operators"] = [{"name": n, "token_sha256": hash_token(t)} for n, t in TOKENS.items()]


@pytest.fixture(scope="module")
def rig(broker, tmp_path_factory):
    with provisioned(tmp_path_factory.mktemp("release-examples"), broker, adjust=_adjust) as provisioned_rig:
        yield provisioned_rig


def _node_command() -> list[str]:
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are needed for the Node.js example (apt-get install nodejs npm)")
    if not (NODE_DIR / "node_modules" / "amqplib").is_dir():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, check=True, timeout=300,
                       capture_output=True)
    return ["node", str(NODE_DIR / "announce_release.mjs")]


@pytest.mark.parametrize("example", ["python", "node"])
async def test_the_release_example_announces_a_release_the_cmdb_records_and_pulls(
        rig: Provisioned, tmp_path, example):
    command = ([sys.executable, str(EXAMPLES / "announce_release_with_pika.py")] if example == "python"
               else _node_command())
    version = "004500000" if example == "python" else "004600000"
    runtime = bootstrap(rig.config_as(rig.component("cmdb")), f"sqlite:///{tmp_path / 'cmdb.db'}",
                        publish_retry_seconds=0.5)
    stop = asyncio.Event()
    task = asyncio.create_task(run_cmdb(runtime, host="127.0.0.1", port=_free_port(), stop=stop))
    try:
        async with Probe(rig.admin_url) as probe, httpx.AsyncClient(
                transport=httpx.ASGITransport(app=runtime.api), base_url="http://cmdb", headers=auth()) as api:
            await probe.bind(binding(PullRequested, project="ssss"))
            await _until(lambda: runtime.consumer.started)
            done = await asyncio.to_thread(
                subprocess.run, command, capture_output=True, text=True, timeout=120,
                env={**os.environ, "AMQP_URL": rig.url(rig.team_user), "PROJECT": "ssss", "AREA": "cn",
                     "VERSION": version})
            assert done.returncode == 0, done.stderr
            (pulled,) = await probe.wait_for(1)
            (release,) = (await api.get("/api/releases")).json()
    finally:
        stop.set()
        await task
    assert (release["project"], release["area_code"], release["version"]) == ("ssss", "cn", version)
    assert release["publisher"] == rig.team_user and release["pull_started_by"] == "auto_pull_on_release"
    pull = Envelope.from_bytes(pulled.body)
    assert (pull.updateid, pull.causationid) == (release["update_id"], release["id"])
    assert f"published {release['id']} ssss.cn.release.announced.v1" in done.stdout
