"""config/rsyncd.conf.example, the ops manager's production rsync module, run as written by a real daemon.

Only what must differ on this machine is replaced: the paths (into the test's directory), the
listening address and port (loopback, a free port), ``hosts allow`` (the loopback client instead
of the seed's receiver 192.168.40.8) and uid/gid (this machine has no ``hotupdate`` user). Every
other line (chroot, read only/write only, auth users, strict modes, refused options, hosts deny,
max connections, incoming chmod) runs as written, and the test checks the ones it can play against.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import shutil
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from consumers.file_push.rsync import DaemonModule, push_files
from demo.rsyncd import free_port
from domain.layout import incoming_dir, update_path

pytestmark = [pytest.mark.rsync]

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "config" / "rsyncd.conf.example"
PASSWORD = "s3cret-of-the-example"
PROJECT, AREA, UPDATE_ID, VERSION = "ssss", "cn", "350cf0ef-c12e-4bcc-d0df-369a09a4a357", "004200000"


def substitute(text: str, values: dict[str, str]) -> str:
    """``text`` with the value of each named setting replaced; every name must occur exactly once."""
    for key, value in values.items():
        pattern = re.compile(rf"^(\s*){re.escape(key)}\s*=.*$", re.MULTILINE)
        assert len(pattern.findall(text)) == 1, f"{key} must be set once in {EXAMPLE.name}"
        text = pattern.sub(lambda m, v=value, k=key: f"{m.group(1)}{k} = {v}", text)
    return text


@dataclass
class Daemon:
    root: Path
    port: int
    incoming: Path
    process: subprocess.Popen[bytes]

    def module(self, password_file: Path) -> DaemonModule:
        return DaemonModule(ip="127.0.0.1", port=self.port, module="cmdb_hot_server", user="cmdb_user",
                            password_file=password_file)

    def url(self, tail: str = "") -> str:
        return f"rsync://cmdb_user@127.0.0.1:{self.port}/cmdb_hot_server/{tail}"


def _password_file(directory: Path, password: str = PASSWORD) -> Path:
    path = directory / f"pass-{time.monotonic_ns()}"
    path.write_text(password + "\n", encoding="utf-8")
    os.chmod(path, 0o600)
    return path


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    if shutil.which("rsync") is None:
        pytest.fail("rsync is not installed", pytrace=False)
    if os.geteuid() != 0:
        # As in production: the system's rsync service starts as root to chroot and change uid.
        pytest.skip("the example's `use chroot = yes` and uid/gid need the daemon started as root")
    incoming = tmp_path / "hot_incoming"
    incoming.mkdir()
    secrets = tmp_path / "rsyncd.secrets"
    secrets.write_text(f"cmdb_user:{PASSWORD}\n", encoding="utf-8")
    os.chmod(secrets, 0o600)
    port = free_port()
    conf = tmp_path / "rsyncd.conf"
    conf.write_text(substitute(EXAMPLE.read_text(encoding="utf-8"), {
        "pid file": str(tmp_path / "rsyncd.pid"),
        "lock file": str(tmp_path / "rsyncd.lock"),
        "log file": str(tmp_path / "rsyncd.log"),
        "address": "127.0.0.1",
        "port": str(port),
        "path": str(incoming),
        "uid": pwd.getpwuid(os.getuid()).pw_name,
        "gid": grp.getgrgid(os.getgid()).gr_name,
        "secrets file": str(secrets),
        "hosts allow": "127.0.0.1",
    }), encoding="utf-8")
    process = subprocess.Popen(["rsync", "--daemon", "--no-detach", f"--config={conf}"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while True:
            assert process.poll() is None, f"rsync daemon exited: {process.stderr.read() if process.stderr else ''}"
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                assert time.monotonic() < deadline, "rsync daemon is not listening"
                time.sleep(0.05)
        yield Daemon(tmp_path, port, incoming, process)
    finally:
        process.terminate()
        process.wait(timeout=10)
        if process.stderr is not None:
            process.stderr.close()


def _source(tmp_path: Path, files: dict[str, bytes]) -> tuple[Path, list[str]]:
    """Files laid out as the version receiver's backup: names start with the update's path."""
    source = tmp_path / "backup" / "hot_server"
    prefix = update_path(PROJECT, AREA, UPDATE_ID, VERSION)
    for name, content in files.items():
        path = source / prefix / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return source, [str(prefix / name) for name in files]


def _rsync(*args: str, password_file: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RSYNC_")}
    return subprocess.run(["rsync", f"--password-file={password_file}", "--contimeout=10", "--timeout=10", *args],
                          capture_output=True, text=True, timeout=60, env=env, check=False)


def test_files_pushed_as_file_push_does_land_where_the_ops_executor_reads_them(daemon, tmp_path):
    files = {"ebin/role_server.beam": b"\x83beam" * 100, "config/skill.config": b"{skill, 1}.\n"}
    source, names = _source(tmp_path, files)
    result = push_files(daemon.module(_password_file(tmp_path)), source, names, timeout_seconds=30)
    assert result.ok, result.error
    landed = incoming_dir(daemon.incoming, PROJECT, AREA, UPDATE_ID, VERSION)
    for name, content in files.items():
        path = landed / name
        assert path.read_bytes() == content
        assert path.stat().st_uid == os.getuid()  # the module's uid: the ops executor's user
        assert stat.S_IMODE(path.stat().st_mode) & 0o007 == 0  # incoming chmod: nothing for others


def test_a_wrong_password_is_refused_and_nothing_lands(daemon, tmp_path):
    source, names = _source(tmp_path, {"a.txt": b"a"})
    result = push_files(daemon.module(_password_file(tmp_path, "wrong")), source, names, timeout_seconds=30)
    assert not result.ok and "auth failed" in result.error
    assert list(daemon.incoming.iterdir()) == []


def test_a_host_not_allowed_is_refused(daemon, tmp_path):
    # The same machine, another loopback address as the client's source: not in `hosts allow`.
    source, _ = _source(tmp_path, {"a.txt": b"a"})
    done = _rsync("-r", "--address=127.0.0.2", f"{source}/", daemon.url(), password_file=_password_file(tmp_path))
    # The daemon does not even admit the module exists to such a host, and logs the refusal.
    assert done.returncode != 0 and "Unknown module 'cmdb_hot_server'" in done.stderr
    log = (daemon.root / "rsyncd.log").read_text(encoding="utf-8")
    assert "rsync denied on module cmdb_hot_server from UNDETERMINED (127.0.0.2)" in log
    assert list(daemon.incoming.iterdir()) == []


def test_nobody_reads_lists_or_deletes_through_the_module(daemon, tmp_path):
    source, names = _source(tmp_path, {"a.txt": b"a"})
    password = _password_file(tmp_path)
    assert push_files(daemon.module(password), source, names, timeout_seconds=30).ok
    download = _rsync("-r", daemon.url(), str(tmp_path / "copy"), password_file=password)
    assert download.returncode != 0 and "write only" in download.stderr
    (tmp_path / "empty").mkdir()
    delete = _rsync("-r", "--delete", f"{tmp_path / 'empty'}/", daemon.url(), password_file=password)
    assert delete.returncode != 0 and "configured to refuse --delete" in delete.stderr
    assert (incoming_dir(daemon.incoming, PROJECT, AREA, UPDATE_ID, VERSION) / "a.txt").read_bytes() == b"a"


def test_the_example_is_the_one_in_the_deploy_guide():
    guide = (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
    block = re.search(r"```ini\n(# /etc/rsyncd\.conf on an ops manager.*?)```", guide, re.DOTALL)
    assert block is not None and block.group(1) == EXAMPLE.read_text(encoding="utf-8"), (
        "docs/deploy.md must show config/rsyncd.conf.example as it is")


def test_a_secrets_file_others_can_read_stops_every_push(daemon, tmp_path):
    # `strict modes = yes`: the daemon will not use a secrets file others can read (deploy.md step 2).
    os.chmod(daemon.root / "rsyncd.secrets", 0o644)
    source, names = _source(tmp_path, {"a.txt": b"a"})
    result = push_files(daemon.module(_password_file(tmp_path)), source, names, timeout_seconds=30)
    assert not result.ok and "auth failed" in result.error
    assert "secrets file must not be other-accessible" in (daemon.root / "rsyncd.log").read_text(encoding="utf-8")
