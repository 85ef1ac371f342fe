"""``dashboard serve`` and ``cmdb serve`` over HTTPS with the certificate and key the configuration
names (a self-signed one made here), answering real HTTPS requests and nothing in plain HTTP."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from projections.dashboard.access import hash_token
from projections.ingest import ingest_batch
from tests.cmdb_support import auth, config_dict
from tests.https_support import SelfSigned, self_signed
from tests.projection_support import DASHBOARD_AUTH, DASHBOARD_TOKEN, hot_server_flow, migrated_engine

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _hotupdate(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "cli.main", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


def _wait_https(url: str, tls: SelfSigned, proc: subprocess.Popen[bytes], headers: dict[str, str]) -> httpx.Response:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(proc.stdout.read().decode(errors="replace") if proc.stdout else "exited")
        try:
            return httpx.get(url, verify=tls.client_context(), headers=headers, timeout=2)
        except (httpx.ConnectError, httpx.TimeoutException):  # not listening, or no worker accepting yet
            time.sleep(0.2)
    raise AssertionError(f"{url} did not answer")


def _stop(proc: subprocess.Popen[bytes]) -> str:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=20)
    return out.decode(errors="replace")


def _plain_http_refused(port: int) -> None:
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{port}/", timeout=5)


def test_dashboard_serve_answers_over_https_with_the_configured_certificate(tmp_path):
    url = f"sqlite:///{tmp_path / 'projection.db'}"
    engine = migrated_engine(url)
    ingest_batch(engine, hot_server_flow())
    engine.dispose()
    tls = self_signed(tmp_path)
    config = tmp_path / "hotupdate.yaml"
    config.write_text(yaml.safe_dump({
        "projects": {"ssss": {"areas": {}}},
        "projection": {"database_url": url},
        "dashboard": {"users": {"auditor": {"projects": ["*"], "token_sha256": hash_token(DASHBOARD_TOKEN)}},
                      "https": {"certfile": "server.crt", "keyfile": "server.key"}},  # beside the file
    }))
    port = _free_port()
    proc = _hotupdate("dashboard", "serve", "--config", str(config), "--port", str(port))
    try:
        listed = _wait_https(f"https://127.0.0.1:{port}/api/updates", tls, proc, DASHBOARD_AUTH)
        assert listed.status_code == 200 and listed.json()["total"] == 1
        assert httpx.get(f"https://127.0.0.1:{port}/api/updates", verify=tls.client_context()).status_code == 401
        with pytest.raises(httpx.ConnectError):  # the default trust store does not know this certificate
            httpx.get(f"https://127.0.0.1:{port}/api/updates", timeout=5)
        _plain_http_refused(port)
    finally:
        _stop(proc)


def test_dashboard_serve_refuses_a_session_key_others_can_read_and_a_config_no_one_can_sign_in_with(tmp_path):
    key = tmp_path / "session.key"
    key.write_bytes(os.urandom(48).hex().encode())
    key.chmod(0o644)
    section = {"users": {"auditor": {"projects": ["*"], "token_sha256": hash_token(DASHBOARD_TOKEN)}},
               "session_secret_file": str(key)}
    for dashboard, complaint in ((section, "readable by others"),
                                 ({"groups": {"ops": ["ssss"]}}, "no one can sign in")):
        config = tmp_path / "hotupdate.yaml"
        config.write_text(yaml.safe_dump({"projects": {"ssss": {"areas": {}}}, "dashboard": dashboard}))
        done = subprocess.run([sys.executable, "-m", "cli.main", "dashboard", "serve", "--config", str(config),
                               "--database-url", f"sqlite:///{tmp_path / 'p.db'}"], cwd=ROOT, capture_output=True,
                              text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert done.returncode == 2 and complaint in done.stderr, done.stderr


@pytest.mark.rabbit
def test_cmdb_serve_answers_over_https_with_the_configured_certificate(tmp_path, amqp_url):
    tls = self_signed(tmp_path)
    raw = config_dict()
    raw["amqp_url"] = amqp_url
    raw["cmdb"] = {**raw["cmdb"], "database_url": f"sqlite:///{tmp_path / 'cmdb.db'}",
                   "https": {"certfile": str(tls.certfile), "keyfile": str(tls.keyfile)}}
    config = tmp_path / "hotupdate.yaml"
    config.write_text(yaml.safe_dump(raw, allow_unicode=True))
    port = _free_port()
    proc = _hotupdate("cmdb", "serve", "--config", str(config), "--port", str(port),
                      env={"HOTUPDATE_AMQP_URL": amqp_url})
    try:
        health = _wait_https(f"https://127.0.0.1:{port}/healthz", tls, proc, {})
        assert health.status_code == 200
        api = f"https://127.0.0.1:{port}/api/updates/no-such-update"
        assert httpx.get(api, verify=tls.client_context(), timeout=5).status_code == 401
        unknown = httpx.get(api, headers=auth(), verify=tls.client_context(), timeout=5)
        assert unknown.status_code == 404  # the operator's token went over TLS and was accepted
        _plain_http_refused(port)
    finally:
        _stop(proc)


@pytest.mark.slow
def test_every_worker_honours_a_session_signed_with_the_configured_key(tmp_path):
    from tests.unit.test_dashboard_access import _session_cookie

    url = f"sqlite:///{tmp_path / 'projection.db'}"
    engine = migrated_engine(url)
    ingest_batch(engine, hot_server_flow())
    engine.dispose()
    tls = self_signed(tmp_path)
    key = tmp_path / "session.key"
    key.write_bytes(os.urandom(48).hex().encode())
    key.chmod(0o600)
    config = tmp_path / "hotupdate.yaml"
    config.write_text(yaml.safe_dump({
        "projects": {"ssss": {"areas": {}}},
        "dashboard": {"groups": {"ops": ["ssss"]}, "session_secret_file": str(key),
                      "oidc": {"issuer": "https://sso.invalid", "client_id": "dash"},
                      "https": {"certfile": str(tls.certfile), "keyfile": str(tls.keyfile)}},
    }))
    port = _free_port()
    proc = _hotupdate("dashboard", "serve", "--config", str(config), "--database-url", url, "--port", str(port),
                      "--workers", "2")
    cookie = _session_cookie({"viewer": {"name": "ana", "groups": ["ops"], "until": time.time() + 600}},
                             key.read_bytes().strip())
    try:
        assert _wait_https(f"https://127.0.0.1:{port}/api/state", tls, proc, {}).status_code == 401
        with httpx.Client(verify=tls.client_context(), timeout=5) as client:
            client.cookies.set("hotupdate_dashboard", cookie)
            # a new connection each time, so both workers answer some of them
            answers = [client.get(f"https://127.0.0.1:{port}/api/updates", headers={"Connection": "close"})
                       for _ in range(20)]
        assert all(a.status_code == 200 and a.json()["total"] == 1 for a in answers)
    finally:
        _stop(proc)
