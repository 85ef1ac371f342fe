"""``hotupdate db upgrade``, ``projection run`` and ``dashboard serve`` as real processes."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import inspect

from bus.history import read_history
from bus.publisher import AsyncPublisher
from bus.topology import ServiceQueue, Topology, declare_all
from domain.db import make_engine
from projections.dashboard.served import listening_socket
from projections.ingest import ingest_batch
from projections.service import SERVICE
from tests.projection_support import DASHBOARD_AUTH, hot_server_flow, migrated_engine, write_dashboard_config

ROOT = Path(__file__).resolve().parents[2]
# The subcommands as `hotupdate` runs them, whether or not cli/main.py lists the module yet.
_ENTRY = (
    "import argparse, logging, sys\n"
    "from cli import projection_cmd\n"
    "parser = argparse.ArgumentParser(prog='hotupdate')\n"
    "projection_cmd.register(parser.add_subparsers(dest='command', required=True))\n"
    "args = parser.parse_args()\n"
    "logging.basicConfig(level=logging.INFO)\n"
    "sys.exit(args.func(args))\n"
)


def _hotupdate(*args: str) -> list[str]:
    return [sys.executable, "-c", _ENTRY, *args]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop(proc: subprocess.Popen[bytes]) -> tuple[int, str]:
    proc.send_signal(signal.SIGTERM)
    try:
        out, _ = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise AssertionError(f"did not stop on SIGTERM:\n{out.decode(errors='replace')}") from None
    return proc.returncode, out.decode(errors="replace")


def test_db_upgrade_creates_the_projection_tables(tmp_path):
    url = f"sqlite:///{tmp_path / 'p.db'}"
    done = subprocess.run(_hotupdate("db", "upgrade", "--url", url, "--branch", "projection"), cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    engine = make_engine(url)
    tables = set(inspect(engine).get_table_names())
    engine.dispose()
    assert {"projection_event_log", "projection_head", "projection_updates", "projection_rejected"} <= tables
    assert "cmdb_hot_updates" not in tables


@pytest.mark.rabbit
@pytest.mark.slow
def test_projection_run_and_dashboard_serve_work_together(tmp_path, amqp_url):
    url = f"sqlite:///{tmp_path / 'p.db'}"
    flow = hot_server_flow()
    port = _free_port()
    config = tmp_path / "config.yaml"  # who may publish what (everything as guest, in tests)
    config.write_text('broker: {shared_user: guest}\nprojects: {ssss: {areas: {hot_server: {"大陆": [cn]}}}}\n',
                      encoding="utf-8")
    consumer = subprocess.Popen(_hotupdate("projection", "run", "--database-url", url, "--amqp-url", amqp_url,
                                           "--history-stream", "--config", str(config)),
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    dashboard = subprocess.Popen(
        _hotupdate("dashboard", "serve", "--database-url", url, "--port", str(port),
                   "--config", str(write_dashboard_config(tmp_path))),
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        published = False
        detail = None
        while time.monotonic() < deadline:
            time.sleep(0.2)
            try:
                state = httpx.get(f"{base}/api/state", timeout=2, headers=DASHBOARD_AUTH)
            except httpx.HTTPError:
                continue
            if not published and state.status_code == 200:
                asyncio.run(_declare_and_publish(amqp_url, [env for env, _ in flow]))
                published = True
            detail = httpx.get(f"{base}/api/updates/{flow[0][0].updateid}", timeout=2, headers=DASHBOARD_AUTH)
            if detail.status_code == 200 and detail.json()["event_count"] == len(flow):
                break
        assert detail is not None and detail.status_code == 200, detail
        assert detail.json()["stage"] == "completed"
        assert "text/html" in httpx.get(f"{base}/updates/{flow[0][0].updateid}", timeout=2,
                                        headers=DASHBOARD_AUTH).headers["content-type"]
        kept = asyncio.run(_history_ids(amqp_url))  # --history-stream: the broker kept a copy too
        assert kept == [env.id for env, _ in flow]
    finally:
        consumer_code, consumer_out = _stop(consumer)
        dashboard_code, dashboard_out = _stop(dashboard)
    assert consumer_code == 0, consumer_out
    # uvicorn shuts down gracefully, then re-raises the signal so supervisors see why it ended
    assert dashboard_code in (0, -signal.SIGTERM), dashboard_out
    assert "Finished server process" in dashboard_out


async def _declare_and_publish(url, envelopes):
    # The projection's queue, declared as `projection run` declares it, so nothing published is unroutable.
    await declare_all(url, Topology(), [ServiceQueue(service=SERVICE, bindings=("#",))])
    async with AsyncPublisher(url) as pub:
        for env in envelopes:
            await pub.publish(env)


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


@pytest.mark.slow
def test_dashboard_serve_with_workers_answers_from_each_and_stops_them_all(tmp_path):
    url = f"sqlite:///{tmp_path / 'p.db'}"
    engine = migrated_engine(url)
    ingest_batch(engine, hot_server_flow())
    engine.dispose()
    port = _free_port()
    dashboard = subprocess.Popen(
        _hotupdate("dashboard", "serve", "--database-url", url, "--port", str(port), "--workers", "2",
                   "--config", str(write_dashboard_config(tmp_path))),
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 60
        answered = 0
        while time.monotonic() < deadline and answered < 20:
            try:
                listed = httpx.get(f"http://127.0.0.1:{port}/api/updates", timeout=2, headers=DASHBOARD_AUTH)
            except httpx.HTTPError:
                time.sleep(0.2)
                continue
            assert listed.status_code == 200 and listed.json()["total"] == 1
            answered += 1
        assert answered == 20
        workers = [pid for pid in _children(dashboard.pid)
                   if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]
        assert len(workers) == 2
    finally:
        code, out = _stop(dashboard)
    assert code in (0, -signal.SIGTERM), out
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()], "a worker outlived the server"


def test_dashboard_serve_refuses_no_workers(tmp_path):
    done = subprocess.run(_hotupdate("dashboard", "serve", "--database-url", f"sqlite:///{tmp_path / 'p.db'}",
                                     "--workers", "0", "--config", str(write_dashboard_config(tmp_path))),
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--workers must be at least 1" in done.stderr


def test_the_workers_port_gives_accepted_connections_tcp_nodelay():
    # Without it every keep-alive response of a worker waited for the client's delayed ACK (40 ms).
    listener = listening_socket("127.0.0.1", 0)
    try:
        client = socket.create_connection(listener.getsockname()[:2])
        accepted, _ = listener.accept()
        try:
            assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        finally:
            accepted.close()
            client.close()
    finally:
        listener.close()


async def _history_ids(url):
    return [e.envelope.id async for e in read_history(url, Topology(), idle_seconds=1.0) if e.envelope]
