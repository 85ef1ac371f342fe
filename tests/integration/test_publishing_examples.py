"""The examples in docs/publishing.md publish for real, and the page shows them as they are."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.busprobe import Probe

pytestmark = [pytest.mark.rabbit]
DOCS = Path(__file__).resolve().parents[2] / "docs"


@pytest.mark.parametrize("script", ["publish_with_pika.py", "publish_with_hotupdate.py"])
async def test_documented_example_publishes_a_valid_event(amqp_url, script):
    from bus.contract.envelope import Envelope
    from bus.contract.registry import DEFAULT_REGISTRY

    async with Probe(amqp_url) as probe:
        await probe.bind("snqxz.#")
        out = subprocess.run(
            [sys.executable, str(DOCS / "examples" / script)],
            env={**os.environ, "AMQP_URL": amqp_url}, capture_output=True, text=True, timeout=60,
        )
        assert out.returncode == 0, out.stderr
        (msg,) = await probe.wait_for(1)
    envelope = Envelope.from_bytes(msg.body)
    DEFAULT_REGISTRY.decode(envelope)  # valid against the catalogue
    assert msg.routing_key == "snqxz.tw.pull.requested.v1"
    assert msg.message_id == envelope.id


def test_publishing_page_shows_the_examples_verbatim():
    page = (DOCS / "publishing.md").read_text(encoding="utf-8")
    for script in ("publish_with_pika.py", "publish_with_hotupdate.py"):
        assert (DOCS / "examples" / script).read_text(encoding="utf-8").strip() in page
