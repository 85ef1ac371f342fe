"""A real OpenSSH server on loopback for the ssh runner's tests: its own host key, one authorised
client key, listening on 127.0.0.1 and 127.0.0.2 (two "game hosts" that are this machine).

Everything lives in a temporary directory: the server's config, host key, pid file and the
client's key pair and known_hosts. Nothing of the machine's own ssh setup is read or changed,
except that a root sshd needs its privilege-separation directory (/run/sshd) to exist.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

SSHD = "/usr/sbin/sshd"
HOSTS = ("127.0.0.1", "127.0.0.2")


def available() -> bool:
    return Path(SSHD).exists() and shutil.which("ssh") is not None and shutil.which("ssh-keygen") is not None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def keygen(path: Path) -> Path:
    """An ed25519 key pair at ``path`` (private, mode 600) and ``path``.pub."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "hotupdate-test", "-f", str(path)],
                   check=True)
    return path


@dataclass
class Sshd:
    root: Path
    port: int
    user: str
    client_key: Path
    known_hosts: Path
    process: subprocess.Popen[bytes]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start(root: Path) -> Sshd:
    """Start sshd in the foreground (``-D``) under ``root``; returns once it accepts connections."""
    root.mkdir(parents=True, exist_ok=True)
    host_key = keygen(root / "host_ed25519")
    client_key = keygen(root / "client_ed25519")
    (root / "authorized_keys").write_text((root / "client_ed25519.pub").read_text())
    port = _free_port()
    user = getpass.getuser()
    host_pub = (root / "host_ed25519.pub").read_text().split()[:2]
    known_hosts = root / "known_hosts"
    known_hosts.write_text("".join(f"[{h}]:{port} {' '.join(host_pub)}\n" for h in HOSTS))
    config = root / "sshd_config"
    config.write_text("\n".join([
        f"Port {port}",
        *(f"ListenAddress {h}" for h in HOSTS),
        f"HostKey {host_key}",
        f"PidFile {root / 'sshd.pid'}",
        f"AuthorizedKeysFile {root / 'authorized_keys'}",
        f"AllowUsers {user}",
        "PermitRootLogin prohibit-password",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "UsePAM no",
        "StrictModes no",  # the temporary directory's modes are the test runner's, not a home dir's
        "LogLevel ERROR",
        "",
    ]))
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    process = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stderr=open(root / "sshd.log", "wb"))  # noqa: SIM115
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"sshd exited {process.returncode}: {(root / 'sshd.log').read_text()}")
        try:
            with socket.create_connection((HOSTS[-1], port), timeout=0.5):
                return Sshd(root, port, user, client_key, known_hosts, process)
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"sshd did not listen on port {port}: {(root / 'sshd.log').read_text()}")
