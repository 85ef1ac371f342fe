"""``hotupdate consume file-pull`` as a real process: it answers through the broker and stops on SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from bus.contract.envelope import Envelope
from bus.contract.events import FilesPulled, PullRequested
from bus.contract.registry import DEFAULT_REGISTRY, make_envelope
from bus.publisher import AsyncPublisher
from bus.topology import binding
from tests.busprobe import Probe

pytestmark = [pytest.mark.rabbit]
ROOT = Path(__file__).resolve().parents[2]
# cli/main.py lists subcommand modules; this runs cli.consume alone so the test does not depend on that list.
RUNNER = (
    "import argparse, logging, sys\n"
    "from cli import consume\n"
    "p = argparse.ArgumentParser(prog='hotupdate')\n"
    "consume.register(p.add_subparsers(dest='command', required=True))\n"
    "a = p.parse_args(sys.argv[1:])\n"
    "logging.basicConfig(level=logging.INFO, stream=sys.stderr)\n"
    "sys.exit(a.func(a))\n"
)


def _wait_for_line(proc: subprocess.Popen[str], text: str, timeout: float = 30) -> list[str]:
    assert proc.stderr is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        if text in line:
            return lines
    raise AssertionError(f"{text!r} not logged; got:\n{''.join(lines)}")


async def test_consume_file_pull_serves_until_sigterm_then_exits_cleanly(amqp_url, tmp_path):
    reload = tmp_path / "v/server/ssss/cn/7/reloadfiles"
    reload.mkdir(parents=True)
    (reload / "a.txt").write_text("a")
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "amqp_url": amqp_url,
        "broker": {"shared_user": "guest"},
        "projects": {"ssss": {"areas": {"hot_server": {"大陆": ["cn"]}},
                              "inventory": {"cn": {"servers": {"game": {"127.0.0.1": ["qq_1"]}}}}}},
        "receivers": {"recv1": {"projects": ["ssss"], "version_root": "v", "backup_root": "b"}},
    }, allow_unicode=True), encoding="utf-8")
    proc = subprocess.Popen(
        [sys.executable, "-c", RUNNER, "consume", "file-pull", "--config", str(config), "--receiver", "recv1"],
        cwd=tmp_path, stderr=subprocess.PIPE, text=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    try:
        await asyncio.to_thread(_wait_for_line, proc, "consuming")
        async with Probe(amqp_url) as probe, AsyncPublisher(amqp_url) as publisher:
            await probe.bind(binding(FilesPulled))
            request = PullRequested(update_type="hot_server", version="7", area_name="大陆", requested_by="alice")
            await publisher.publish(
                make_envelope(request, source="hotupdate/cmdb", updateid="u-1", project="ssss", area="cn")
            )
            (message,) = await probe.wait_for(1)
        proc.send_signal(signal.SIGTERM)
        lines = await asyncio.to_thread(_wait_for_line, proc, "stopped")
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    pulled = DEFAULT_REGISTRY.decode(Envelope.from_bytes(message.body))
    assert isinstance(pulled, FilesPulled)
    assert (tmp_path / "b/hot_server/ssss/cn/u-1/7/a.txt").read_text() == "a"
    assert "handled 1" in lines[-1]
    assert (tmp_path / "file_pull.recv1.processed.db").exists()
