"""The CMDB refuses unauthenticated and oversized bodies before reading them: a real uvicorn server in a
process of its own, a raw socket that sends a 200 MB body, and the server's resident memory watched."""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.cmdb_support import TOKENS, auth, free_port

pytestmark = [pytest.mark.slow]

MiB = 1024 * 1024
LIMIT = 4 * MiB  # the configured default (cmdb.max_body_bytes)
START = {"project": "ssss", "area": "大陆", "update_type": "hot_server", "version": "004200000"}
SERVER = """
import sys
from pathlib import Path
import uvicorn
from producers.cmdb.api import create_app
from tests.cmdb_support import make_config
tmp, port = Path(sys.argv[1]), int(sys.argv[2])
uvicorn.run(create_app(make_config(tmp), f"sqlite:///{tmp / 'cmdb.db'}"), host="127.0.0.1", port=port,
            log_level="warning")
"""


@dataclass
class Server:
    port: int
    process: subprocess.Popen[bytes]

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp, port = tmp_path_factory.mktemp("cmdb"), free_port()
    root = Path(__file__).resolve().parents[3]
    env = {**os.environ, "PYTHONPATH": str(root)}
    process = subprocess.Popen([sys.executable, "-c", SERVER, str(tmp), str(port)], env=env, cwd=tmp)
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert process.poll() is None and time.monotonic() < deadline, "the CMDB did not start"
        time.sleep(0.2)
    yield Server(port, process)
    process.terminate()
    process.wait(timeout=30)


@dataclass
class Sent:
    status: int
    body_bytes_sent: int
    seconds: float


def _send_big_body(port: int, headers: dict[str, str], total: int, *, chunked: bool = False) -> Sent:
    """Send a body of ``total`` bytes in 1 MiB pieces, stopping as soon as the server answers."""
    started = time.monotonic()
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    try:
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        framing = "Transfer-Encoding: chunked\r\n" if chunked else f"Content-Length: {total}\r\n"
        sock.sendall(f"POST /api/updates HTTP/1.1\r\nHost: cmdb\r\nContent-Type: application/json\r\n{head}{framing}"
                     "\r\n".encode())
        piece = b"[" + b"0," * (MiB // 2 - 1) + b"0"
        sent = 0
        while sent < total and not select.select([sock], [], [], 0)[0]:
            try:
                sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
            except (BrokenPipeError, ConnectionResetError):
                break  # the server answered and closed: the answer is waiting to be read
            sent += len(piece)
        select.select([sock], [], [], 10)
        answer = sock.recv(65536).decode("latin-1")
    finally:
        sock.close()
    return Sent(int(answer.split(" ", 2)[1]), sent, time.monotonic() - started)


def test_a_200mb_body_without_a_token_is_answered_401_before_it_is_read(server):
    before = server.rss_bytes()
    sent = _send_big_body(server.port, {}, 200 * MiB)
    grown = server.rss_bytes() - before
    assert sent.status == 401
    assert sent.body_bytes_sent < 20 * MiB, "the answer came only after most of the body was sent"
    assert grown < 10 * MiB, f"the server's memory grew by {grown / MiB:.1f} MiB"


def test_a_wrong_token_is_refused_the_same_way(server):
    sent = _send_big_body(server.port, {"Authorization": "Bearer not-a-token"}, 200 * MiB)
    assert sent.status == 401 and sent.body_bytes_sent < 20 * MiB


def test_an_authenticated_body_declared_over_the_limit_is_answered_413_unread(server):
    before = server.rss_bytes()
    sent = _send_big_body(server.port, auth(), 200 * MiB)
    assert sent.status == 413 and sent.body_bytes_sent < 20 * MiB
    assert server.rss_bytes() - before < 10 * MiB


def test_an_authenticated_chunked_body_is_cut_off_at_the_limit_with_413(server):
    before = server.rss_bytes()
    sent = _send_big_body(server.port, auth(), 200 * MiB, chunked=True)
    assert sent.status == 413
    assert sent.body_bytes_sent < LIMIT + 16 * MiB, "the server kept reading past its limit"
    assert server.rss_bytes() - before < 20 * MiB


def test_a_normal_request_still_works(server):
    base = f"http://127.0.0.1:{server.port}"
    created = httpx.post(f"{base}/api/updates", json=START, headers=auth(), timeout=10)
    assert created.status_code == 201, created.text
    shown = httpx.get(f"{base}/api/updates/{created.json()['id']}", headers=auth("bob"), timeout=10)
    assert shown.status_code == 200 and shown.json()["requested_by"] == "alice"
    assert httpx.get(f"{base}/healthz", timeout=10).status_code == 200  # public
    refused = httpx.get(f"{base}/api/updates/{created.json()['id']}", timeout=10)
    assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
    assert TOKENS["alice"] not in refused.text
