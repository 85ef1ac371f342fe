"""A three-node RabbitMQ cluster of the tests' own, on loopback, next to (never touching) rabbit@localhost.

Built on ``tests.rabbit_node.start_node``: three nodes with distinct names and ports and one shared
random cookie; the second and third join the first (``stop_app``, ``join_cluster``, ``start_app``).
Fault tests kill -9 a node (``kill``) and bring it back (``restart``): it rejoins by itself, its data
and name being kept under the same directory.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tests.rabbit_node import RabbitNode, free_port, start_node


@dataclass
class NodeSlot:
    """What a node needs to be started again with the same identity (name, ports, data directory)."""

    base: Path
    name: str
    amqp_port: int
    dist_port: int


class RabbitCluster:
    """Three (or ``size``) clustered nodes; ``address(vhost)`` is the comma-separated list of their URLs."""

    def __init__(self, slots: list[NodeSlot], cookie: str) -> None:
        self.slots = slots
        self.cookie = cookie
        self.nodes: list[RabbitNode | None] = [None] * len(slots)

    # ------------------------------------------------------------ lifecycle

    def start(self, index: int) -> RabbitNode:
        """Start node ``index`` (again): same name, ports and data, so it rejoins the cluster."""
        slot = self.slots[index]
        node = start_node(slot.base, name=slot.name, amqp_port=slot.amqp_port, dist_port=slot.dist_port,
                          cookie=self.cookie)
        self.nodes[index] = node
        return node

    def node(self, index: int) -> RabbitNode:
        node = self.nodes[index]
        assert node is not None, f"node {index} is not running"
        return node

    def running(self) -> list[RabbitNode]:
        return [n for n in self.nodes if n is not None and n.process.poll() is None]

    def kill(self, index: int) -> None:
        """kill -9 node ``index`` (a crash)."""
        self.node(index).kill()
        self.nodes[index] = None

    def restart(self, index: int) -> RabbitNode:
        """Stop node ``index`` gracefully, then start it again."""
        node = self.nodes[index]
        if node is not None:
            node.stop()
            self.nodes[index] = None
        return self.start(index)

    def heal(self) -> None:
        """Start every node that is not running (a test killed it) and wait until all are members again."""
        for index, node in enumerate(self.nodes):
            if node is None or node.process.poll() is not None:
                self.start(index)
        self.wait_members(len(self.slots))

    def stop(self) -> None:
        for index in reversed(range(len(self.nodes))):
            node = self.nodes[index]
            if node is not None:
                node.stop()
                self.nodes[index] = None

    # ------------------------------------------------------------ addresses and state

    def url(self, index: int, vhost: str = "") -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.slots[index].amqp_port}/{vhost}"

    def address(self, vhost: str = "", *, first: int = 0) -> str:
        """Every node's URL, comma-separated, starting at node ``first`` (a client connects to the first up)."""
        order = [(first + i) % len(self.slots) for i in range(len(self.slots))]
        return ",".join(self.url(i, vhost) for i in order)

    def index_of(self, node_name: str) -> int:
        return next(i for i, s in enumerate(self.slots) if s.name == node_name)

    def ctl(self, *args: str, timeout: float = 60) -> str:
        """rabbitmqctl on any running node."""
        last: Exception | None = None
        for node in self.running():
            try:
                return node.ctl(*args, timeout=timeout)
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                last = exc
        raise RuntimeError(f"no running node answered rabbitmqctl {' '.join(args)}: {last}")

    def add_vhost(self, vhost: str) -> None:
        self.ctl("add_vhost", vhost)
        self.ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")

    def delete_vhost(self, vhost: str) -> None:
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            self.ctl("delete_vhost", vhost)

    def leaders(self, vhost: str) -> dict[str, str]:
        """Quorum queue name → the node holding its leader."""
        out = self.ctl("list_queues", "-p", vhost, "--no-table-headers", "--quiet", "name", "type", "leader")
        leaders: dict[str, str] = {}
        for line in out.splitlines():
            parts = line.split("\t")
            if len(parts) == 3 and parts[1] == "quorum":
                leaders[parts[0]] = parts[2]
        return leaders

    def wait_members(self, count: int, timeout: float = 120) -> None:
        """Until ``count`` nodes are running members of the cluster (as the first running node sees it)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                status = json.loads(self.ctl("cluster_status", "--formatter", "json", timeout=30))
                if len(status.get("running_nodes", [])) >= count:
                    return
            except (RuntimeError, ValueError, subprocess.TimeoutExpired):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the cluster did not reach {count} running nodes in {timeout:.0f}s")
            time.sleep(1)


def start_cluster(base: Path, size: int = 3) -> RabbitCluster:
    """Start ``size`` nodes under ``base`` and cluster them; ``stop()`` the result afterwards."""
    tag = uuid.uuid4().hex[:6]
    slots = [NodeSlot(base / f"n{i + 1}", f"hu-cluster-{tag}-{i + 1}@localhost", free_port(), free_port())
             for i in range(size)]
    cluster = RabbitCluster(slots, cookie=f"hotupdate-cluster-{uuid.uuid4().hex}")
    try:
        # The nodes boot side by side (most of the wait), then join the first one at a time.
        with ThreadPoolExecutor(size) as pool:
            for started in [pool.submit(cluster.start, index) for index in range(size)]:
                started.result()
        first = cluster.node(0)
        for index in range(1, size):
            node = cluster.node(index)
            node.ctl("stop_app")
            node.ctl("join_cluster", first.name)
            node.ctl("start_app")
        cluster.wait_members(size)
    except BaseException:
        cluster.stop()
        raise
    return cluster
