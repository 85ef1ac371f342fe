"""RabbitMQ nodes of the tests' own, on loopback, next to (never touching) the shared rabbit@localhost.

``start_node`` runs the installed broker as a separate node: its own node name, AMQP/TLS/distribution
ports, data, logs, configuration, plugins file and Erlang cookie, all under one directory; nodes given
the same ``cookie`` can be clustered (issue 20 builds its three-node cluster on this). ``make_pki``
writes a test certificate authority, a server certificate and client certificates with the openssl CLI.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

RABBIT_BIN = Path(os.environ.get("HOTUPDATE_TEST_RABBIT_BIN", "/usr/lib/rabbitmq/bin"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------- certificates


@dataclass(frozen=True)
class Pki:
    """A test CA with a server certificate, a client certificate, and an unrelated CA with its own client."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # a CA nobody trusts
    stranger_cert: Path  # a client certificate signed by other_ca
    stranger_key: Path


def _openssl(*args: str | Path) -> None:
    out = subprocess.run(["openssl", *map(str, args)], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(map(str, args[:2]))} failed: {out.stderr}")


def _ca(directory: Path, name: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", key, "-out", cert, "-days", "2", "-subj", f"/CN=hotupdate test {name}",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    return cert, key


def _issue(directory: Path, name: str, ca: tuple[Path, Path], *, cn: str, extensions: str) -> tuple[Path, Path]:
    cert, key, csr, ext = (directory / f"{name}{s}" for s in (".pem", ".key", ".csr", ".ext"))
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", key, "-out", csr, "-subj", f"/CN={cn}")
    ext.write_text(extensions)
    _openssl("x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1], "-CAcreateserial",
             "-out", cert, "-days", "2", "-extfile", ext)
    key.chmod(0o600)
    return cert, key


def make_pki(directory: Path, *, server_names: tuple[str, ...] = ("localhost",)) -> Pki:
    """Certificates for a TLS listener whose certificate names ``server_names`` (DNS names) only."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = _ca(directory, "ca")
    sans = ",".join(f"DNS:{n}" for n in server_names)
    server = _issue(directory, "server", ca, cn=server_names[0],
                    extensions=f"subjectAltName={sans}\nextendedKeyUsage=serverAuth\n")
    client = _issue(directory, "client", ca, cn="hotupdate-test-client", extensions="extendedKeyUsage=clientAuth\n")
    other = _ca(directory, "other-ca")
    stranger = _issue(directory, "stranger", other, cn="stranger", extensions="extendedKeyUsage=clientAuth\n")
    return Pki(ca[0], server[0], server[1], client[0], client[1], other[0], stranger[0], stranger[1])


# ---------------------------------------------------------------- nodes


@dataclass(frozen=True)
class ServerTls:
    """A TLS listener's files; ``require_client_cert`` sets verify_peer + fail_if_no_peer_cert."""

    ca: Path
    cert: Path
    key: Path
    require_client_cert: bool = True


@dataclass
class RabbitNode:
    name: str  # e.g. hu-test-1a2b3c@localhost
    base: Path
    amqp_port: int
    dist_port: int
    tls_port: int | None
    process: subprocess.Popen[bytes]
    env: dict[str, str] = field(repr=False)

    def url(self, vhost: str = "", *, user: str = "guest", password: str = "guest") -> str:
        """The plain AMQP URL of this node."""
        return f"amqp://{user}:{password}@127.0.0.1:{self.amqp_port}/{vhost}"

    def tls_url(self, vhost: str = "", *, host: str = "localhost", user: str = "guest", password: str = "guest") -> str:
        """The amqps URL of this node's TLS listener (without TLS files)."""
        assert self.tls_port is not None, "this node has no TLS listener"
        return f"amqps://{user}:{password}@{host}:{self.tls_port}/{vhost}"

    def ctl(self, *args: str, timeout: float = 60) -> str:
        """rabbitmqctl against this node (and its cookie), never against the shared one."""
        out = subprocess.run([str(RABBIT_BIN / "rabbitmqctl"), "-n", self.name, *args], env=self.env,
                             capture_output=True, text=True, timeout=timeout)
        if out.returncode != 0:
            raise RuntimeError(f"rabbitmqctl -n {self.name} {' '.join(args)} failed: {out.stderr or out.stdout}")
        return out.stdout

    def log_tail(self, lines: int = 30) -> str:
        logs = sorted((self.base / "log").glob("*.log"))
        text = "\n".join(p.read_text(errors="replace") for p in logs)
        return "\n".join(text.splitlines()[-lines:])

    def kill(self) -> None:
        """kill -9 the node (a crash, for fault tests)."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        """Stop the node (gracefully, else killed); its directory stays for the test's tmp_path to remove."""
        if self.process.poll() is None:
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):  # then killed below
                self.ctl("shutdown", timeout=60)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()


def _config(amqp_port: int, tls_port: int | None, tls: ServerTls | None, extra: str) -> str:
    lines = [
        f"listeners.tcp.1 = 127.0.0.1:{amqp_port}",
        "loopback_users = none",
        "disk_free_limit.absolute = 1MB",  # the test machine's free disk is not this node's concern
        "log.console = false",
        "log.file.level = info",
    ]
    if tls is not None and tls_port is not None:
        lines += [
            f"listeners.ssl.1 = 127.0.0.1:{tls_port}",
            f"ssl_options.cacertfile = {tls.ca}",
            f"ssl_options.certfile = {tls.cert}",
            f"ssl_options.keyfile = {tls.key}",
            f"ssl_options.verify = {'verify_peer' if tls.require_client_cert else 'verify_none'}",
            f"ssl_options.fail_if_no_peer_cert = {'true' if tls.require_client_cert else 'false'}",
        ]
    return "\n".join(lines) + "\n" + extra


def start_node(
    base: Path,
    *,
    name: str | None = None,
    amqp_port: int | None = None,
    dist_port: int | None = None,
    tls: ServerTls | None = None,
    tls_port: int | None = None,
    extra_config: str = "",
    cookie: str = "hotupdate-test-cookie",
    timeout: float = 120,
) -> RabbitNode:
    """Start a RabbitMQ node of its own under ``base`` and wait until it serves; ``stop()`` it afterwards."""
    name = name or f"hu-test-{uuid.uuid4().hex[:8]}@localhost"
    amqp_port, dist_port = amqp_port or free_port(), dist_port or free_port()
    if tls is not None:
        tls_port = tls_port or free_port()
    home, data, logs = base / "home", base / "data", base / "log"
    for d in (home, data, logs):
        d.mkdir(parents=True, exist_ok=True)
    (home / ".erlang.cookie").write_text(cookie)
    (home / ".erlang.cookie").chmod(0o400)
    (base / "rabbitmq.conf").write_text(_config(amqp_port, tls_port, tls, extra_config))
    (base / "enabled_plugins").write_text("[].\n")
    (base / "rabbitmq-env.conf").write_text("")  # not /etc/rabbitmq's, which names the shared node
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))},
        "HOME": str(home),
        "RABBITMQ_CONF_ENV_FILE": str(base / "rabbitmq-env.conf"),
        "RABBITMQ_NODENAME": name,
        "RABBITMQ_DIST_PORT": str(dist_port),
        "RABBITMQ_MNESIA_BASE": str(data),
        "RABBITMQ_LOG_BASE": str(logs),
        "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq.conf"),
        "RABBITMQ_ADVANCED_CONFIG_FILE": str(base / "advanced.config"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
        "RABBITMQ_PID_FILE": str(base / "node.pid"),
        "ERL_EPMD_ADDRESS": "127.0.0.1",
        "ERL_FLAGS": "-kernel inet_dist_use_interface {127,0,0,1}",
    }
    with open(logs / "console.out", "ab") as console:
        process = subprocess.Popen([str(RABBIT_BIN / "rabbitmq-server")], env=env, stdout=console,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    node = RabbitNode(name, base, amqp_port, dist_port, tls_port, process, env)
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"node {name} exited with {process.returncode}:\n{node.log_tail()}\n"
                               f"{(logs / 'console.out').read_text(errors='replace')[-2000:]}")
        try:
            node.ctl("await_startup", "--timeout", "10", timeout=30)
            return node
        except (RuntimeError, subprocess.TimeoutExpired):
            if time.monotonic() > deadline:
                node.kill()
                raise RuntimeError(f"node {name} did not start within {timeout:.0f}s:\n{node.log_tail()}") from None
            time.sleep(0.5)
