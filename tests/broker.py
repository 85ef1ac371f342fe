"""Finding a real RabbitMQ for the tests, and giving each test a fresh vhost of its own.

Order: ``HOTUPDATE_AMQP_URL``; else the local broker at 127.0.0.1:5672 when it answers;
else testcontainers' RabbitMQ when a Docker engine exists; else the run fails loudly.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import uuid
from dataclasses import dataclass
from urllib.parse import quote, urlsplit, urlunsplit

LOCAL_URL = "amqp://guest:guest@127.0.0.1:5672/"


class NoBroker(RuntimeError):
    pass


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


@dataclass
class Broker:
    url: str
    ctl: list[str]  # how to run rabbitmqctl against this broker
    container: object | None = None

    def rabbitmqctl(self, *args: str) -> str:
        out = subprocess.run([*self.ctl, *args], capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {out.stderr or out.stdout}")
        return out.stdout

    def new_vhost(self) -> tuple[str, str]:
        """Create a fresh vhost that guest may use; returns (vhost, url)."""
        vhost = f"test-{uuid.uuid4().hex[:12]}"
        self.rabbitmqctl("add_vhost", vhost)
        user = urlsplit(self.url).username or "guest"
        self.rabbitmqctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
        return vhost, with_vhost(self.url, vhost)

    def delete_vhost(self, vhost: str) -> None:
        subprocess.Popen([*self.ctl, "delete_vhost", vhost], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def with_vhost(url: str, vhost: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + quote(vhost, safe=""), parts.query, ""))


def find_broker() -> Broker:
    ctl = [shutil.which("rabbitmqctl") or "rabbitmqctl"]
    if url := os.environ.get("HOTUPDATE_AMQP_URL"):
        return Broker(url, ctl)
    if _answers("127.0.0.1", 5672):
        return Broker(LOCAL_URL, ctl)
    try:
        import docker  # type: ignore[import-untyped]

        docker.from_env().ping()
    except Exception as exc:
        raise NoBroker(
            "no RabbitMQ: HOTUPDATE_AMQP_URL is unset, nothing answers on 127.0.0.1:5672 "
            f"(start it with 'rabbitmq-server -detached'), and no Docker engine for testcontainers ({exc})"
        ) from None
    from testcontainers.rabbitmq import RabbitMqContainer

    container = RabbitMqContainer("rabbitmq:3.13")
    container.start()
    host, port = container.get_container_host_ip(), container.get_exposed_port(5672)
    cid = container.get_wrapped_container().id
    return Broker(f"amqp://guest:guest@{host}:{port}/", ["docker", "exec", cid, "rabbitmqctl"], container)
