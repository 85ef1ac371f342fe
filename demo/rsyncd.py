"""A real rsync daemon: one module, one user, a secrets file, on a free loopback port.

Started with ``rsync --daemon --no-detach`` from a config written into a temporary
directory; ``stop()`` terminates it. Used by the ``rsync_daemon`` fixture in
tests/integration/conftest.py and by the demo, which plays the ops manager's module with it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

START_TIMEOUT = 10.0


class RsyncDaemonError(RuntimeError):
    pass


def free_port() -> int:
    """A loopback TCP port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RsyncDaemon:
    """One ``rsync --daemon`` process serving ``module`` from ``module_path`` to ``user``/``password``."""

    workdir: Path
    module: str = "cmdb_hot_server"
    user: str = "cmdb_user"
    password: str = "s3cret-pass"  # noqa: S105 (a loopback test daemon's default; the demo passes a random one)
    ip: str = "127.0.0.1"
    port: int = 0
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def module_path(self) -> Path:
        return self.workdir / "module"

    @property
    def log_file(self) -> Path:
        return self.workdir / "rsyncd.log"

    def password_file(self, directory: Path, *, mode: int = 0o600, password: str | None = None) -> Path:
        """Write a client password file (the receiver's side) with ``mode``; returns its path."""
        path = directory / f"{self.user}-{mode:03o}-{time.monotonic_ns()}.password"
        path.write_text((self.password if password is None else password) + "\n", encoding="utf-8")
        os.chmod(path, mode)
        return path

    def start(self) -> RsyncDaemon:
        rsync = shutil.which("rsync")
        if rsync is None:
            raise RsyncDaemonError("rsync is not installed")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.module_path.mkdir(exist_ok=True)
        secrets = self.workdir / "rsyncd.secrets"
        secrets.write_text(f"{self.user}:{self.password}\n", encoding="utf-8")
        os.chmod(secrets, 0o600)  # "strict modes" makes the daemon refuse anything looser
        conf = self.workdir / "rsyncd.conf"
        conf.write_text(self._config(secrets), encoding="utf-8")
        last_error = ""
        for _ in range(5):  # a free port can be taken between choosing and binding it
            self.port = free_port()
            self.process = subprocess.Popen(
                [rsync, "--daemon", "--no-detach", f"--config={conf}", f"--address={self.ip}",
                 f"--port={self.port}", f"--log-file={self.log_file}"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            last_error = self._wait_ready()
            if not last_error:
                return self
            self.stop()
        raise RsyncDaemonError(f"rsync daemon did not start: {last_error}")

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        if self.process.stderr is not None:
            self.process.stderr.close()
        self.process = None

    def __enter__(self) -> RsyncDaemon:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _config(self, secrets: Path) -> str:
        # uid/gid: the daemon drops to "nobody" by default when started as root, which
        # could not write into the test's temporary directory.
        return "\n".join(
            [
                f"pid file = {self.workdir / 'rsyncd.pid'}",
                "use chroot = false",
                f"uid = {os.getuid()}",
                f"gid = {os.getgid()}",
                "",
                f"[{self.module}]",
                f"    path = {self.module_path}",
                "    read only = false",
                f"    auth users = {self.user}",
                f"    secrets file = {secrets}",
                "    strict modes = true",
                "",
            ]
        )

    def _wait_ready(self) -> str:
        """'' once the port accepts connections, else why not."""
        assert self.process is not None
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
                log = self.log_file.read_text(errors="replace") if self.log_file.exists() else ""
                return f"exited with {self.process.returncode}: {err.strip()} {log.strip()[-1000:]}"
            try:
                with socket.create_connection((self.ip, self.port), timeout=0.5):
                    return ""
            except OSError:
                time.sleep(0.05)
        return f"nothing listening on {self.ip}:{self.port} after {START_TIMEOUT}s"
