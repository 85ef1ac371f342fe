"""A real OpenSSH server on loopback for the ssh runner's tests: its own host key, one authorised
client key, listening on 127.0.0.1 and 127.0.0.2 (two "game hosts" that are this machine), or on
as many 127.0.0.0/8 addresses as asked (``hosts(n)``): sshd listens on at most 16 addresses, so
one daemon runs per 16, all with the same key, port and configuration.

Each daemon logs at VERBOSE, one line per connection naming the address it reached
("Connection from … on <address> port …"): :meth:`Sshd.logins` counts them per "host".

Everything lives in a temporary directory: the server's config, host key, pid file and the
client's key pair and known_hosts. Nothing of the machine's own ssh setup is read or changed,
except that a root sshd needs its privilege-separation directory (/run/sshd) to exist.
"""

from __future__ import annotations

import getpass
import os
import re
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

SSHD = "/usr/sbin/sshd"
HOSTS = ("127.0.0.1", "127.0.0.2")
ADDRESSES_PER_DAEMON = 16  # sshd's MAX_LISTEN_SOCKS
_CONNECTION = re.compile(r"Connection from \S+ port (\d+) on (\S+) port \d+")
_ACCEPTED = re.compile(r"Accepted publickey for \S+ from \S+ port (\d+)")


def hosts(count: int) -> tuple[str, ...]:
    """``count`` distinct loopback addresses, from 127.0.0.1 up (127.0.1.x after 127.0.0.254, and so on)."""
    return tuple(f"127.0.{i // 254}.{i % 254 + 1}" for i in range(count))


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
    hosts: tuple[str, ...] = HOSTS
    others: tuple[subprocess.Popen[bytes], ...] = ()  # the daemons of addresses beyond the first 16

    @property
    def home(self) -> Path:
        """$HOME of every login (sshd's SetEnv): the "game hosts'" ~/.erlang.cookie and staging go here."""
        return self.root / "home"

    def give_cookie(self, cookie: str) -> None:
        """The ssh user's ~/.erlang.cookie on the "game hosts" (mode 400, as erl wants it)."""
        path = self.home / ".erlang.cookie"
        path.unlink(missing_ok=True)
        path.write_text(cookie)
        path.chmod(0o400)

    def logins(self) -> dict[str, int]:
        """Successful logins at each address so far (from the daemons' logs).

        A connection's "Connection from <client> port N on <address>" line names the address; its
        "Accepted publickey for … port N" line says it logged in (probes and refusals do not).
        """
        counts: dict[str, int] = {}
        for log in sorted(self.root.glob("sshd*.log")):
            text = log.read_text(errors="replace")
            accepted = set(_ACCEPTED.findall(text))
            for port, address in _CONNECTION.findall(text):
                if port in accepted:
                    counts[address] = counts.get(address, 0) + 1
        return counts

    def stop(self) -> None:
        for process in (self.process, *self.others):
            process.terminate()
        for process in (self.process, *self.others):
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def start(root: Path, addresses: tuple[str, ...] = HOSTS) -> Sshd:
    """Start sshd in the foreground (``-D``) under ``root``; returns once every daemon accepts connections."""
    root.mkdir(parents=True, exist_ok=True)
    host_key = keygen(root / "host_ed25519")
    client_key = keygen(root / "client_ed25519")
    (root / "authorized_keys").write_text((root / "client_ed25519.pub").read_text())
    port = _free_port()
    user = getpass.getuser()
    host_pub = (root / "host_ed25519.pub").read_text().split()[:2]
    known_hosts = root / "known_hosts"
    known_hosts.write_text("".join(f"[{h}]:{port} {' '.join(host_pub)}\n" for h in addresses))
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    (root / "home").mkdir(mode=0o700, exist_ok=True)
    groups = [addresses[i:i + ADDRESSES_PER_DAEMON] for i in range(0, len(addresses), ADDRESSES_PER_DAEMON)]
    processes = [_daemon(root, n, group, port, host_key, user) for n, group in enumerate(groups)]
    return Sshd(root, port, user, client_key, known_hosts, processes[0], addresses, tuple(processes[1:]))


def _daemon(root: Path, number: int, addresses: tuple[str, ...], port: int, host_key: Path,
            user: str) -> subprocess.Popen[bytes]:
    suffix = "" if number == 0 else f"-{number}"
    config = root / f"sshd_config{suffix}"
    log = root / f"sshd{suffix}.log"
    config.write_text("\n".join([
        f"Port {port}",
        *(f"ListenAddress {h}" for h in addresses),
        f"HostKey {host_key}",
        f"PidFile {root / f'sshd{suffix}.pid'}",
        f"AuthorizedKeysFile {root / 'authorized_keys'}",
        f"AllowUsers {user}",
        "PermitRootLogin prohibit-password",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "UsePAM no",
        "StrictModes no",  # the temporary directory's modes are the test runner's, not a home dir's
        "MaxStartups 1000",  # the default (10:30:100) drops logins at random beyond 10 at once
        "LogLevel VERBOSE",
        # The game host's home of the ssh user: staging directories and ~/.erlang.cookie live there,
        # not in the home of whoever runs the tests.
        f"SetEnv HOME={root / 'home'}",
        "",
    ]))
    process = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stderr=open(log, "wb"))  # noqa: SIM115
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"sshd exited {process.returncode}: {log.read_text()}")
        try:
            with socket.create_connection((addresses[-1], port), timeout=0.5):
                return process
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"sshd did not listen on port {port}: {log.read_text()}")


def session_process(pid: int) -> int:
    """The sshd process serving the connection that started process ``pid`` (its nearest sshd ancestor).

    Killing it (SIGKILL) cuts that one connection, as a network drop or a crashed host would.
    """
    current = pid
    while current > 1:
        stat = Path(f"/proc/{current}/stat").read_text()
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        if name.startswith("sshd"):
            return current
        current = int(stat[stat.rindex(")") + 2:].split()[1])
    raise LookupError(f"process {pid} was not started through sshd")
