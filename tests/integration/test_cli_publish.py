"""`hotupdate publish`: another team's event file is validated, then published with confirms."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest

from bus.contract.examples import EXAMPLES
from bus.contract.registry import make_envelope
from tests.busprobe import Probe

pytestmark = [pytest.mark.rabbit]


def _publish(amqp_url: str, body: bytes, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli.main", "publish", "-", "--amqp-url", amqp_url, *extra],
                          input=body.decode("utf-8", errors="replace"), capture_output=True, text=True, timeout=60)


async def test_valid_event_on_stdin_is_published_with_its_id(amqp_url):
    env = make_envelope(EXAMPLES[0], source="tools/release-bot", updateid="u-9", project="ssss", area="cn")
    async with Probe(amqp_url) as probe:
        await probe.bind("ssss.#")
        done = await asyncio.to_thread(_publish, amqp_url, env.to_bytes())
        assert done.returncode == 0, done.stderr
        (msg,) = await probe.wait_for(1)
    assert msg.message_id == env.id
    assert f"published hotupdate.pull.requested.v1 {env.id}" in done.stdout


async def test_invalid_event_is_refused_naming_the_field_and_nothing_is_published(amqp_url):
    raw = make_envelope(EXAMPLES[0], source="tools/x", updateid="u-9", project="ssss", area="cn").model_dump(
        mode="json")
    raw["data"]["version"] = "4.2"
    async with Probe(amqp_url) as probe:
        await probe.bind("#")
        done = await asyncio.to_thread(_publish, amqp_url, json.dumps(raw).encode())
        await asyncio.sleep(0.5)
    assert done.returncode == 2
    assert "refused:" in done.stderr and "version: String should match pattern" in done.stderr
    assert probe.messages == []


def test_dry_run_validates_without_a_broker():
    env = make_envelope(EXAMPLES[3], source="hotupdate/cmdb", updateid="u-9", project="ssss", area="cn")
    done = _publish("amqp://guest:guest@127.0.0.1:1/", env.to_bytes(), "--dry-run")
    assert done.returncode == 0 and "valid: hotupdate.push.requested.v1" in done.stdout
