"""The whole system as real processes for fault tests: the demo's world on a fresh vhost and a tmp dir.

Reuses the demo rig (demo.world, demo.rsyncd, demo.erlang, demo.run.start_components): an
rsync daemon as the ops manager's module, real Erlang game servers, and every component as
its own ``hotupdate`` process, any one of which a test may kill -9 and start again.
Side effects are counted where they land: ``role_server:bump()`` appends one byte to
``runs`` in a node's cwd, so an Erlang command list with it counts how often each game
server ran its commands.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import shutil
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import Future
from contextlib import ExitStack, closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import yaml

from demo.erlang import ErlangNodes
from demo.rsyncd import RsyncDaemon
from demo.run import Components, start_components, wait_consumers
from demo.world import AREA_NAME, MODULE, PROJECT, World, build, code_dir
from domain.allowed import DEFAULT_ERLANG_CMD_ALLOWED, erlang_command_form

T = TypeVar("T")
FINAL = {"pull_failed", "push_failed", "completed", "failed"}
BUMP = f"{MODULE}:bump()."
Configure = Callable[[dict[str, Any]], None]
# One hot_server update's events in the demo world (4 IPs), as a clean run logs them.
HOT_SERVER_EVENTS = Counter({
    "hotupdate.pull.requested.v1": 1, "hotupdate.files.pulled.v1": 1, "hotupdate.push.requested.v1": 1,
    "hotupdate.files.pushed.v1": 1, "hotupdate.update.requested.v3": 1, "hotupdate.update.started.v1": 1,
    "hotupdate.ip.finished.v1": 4, "hotupdate.update.completed.v2": 1,
})
VIEW_TABLES = ("projection_updates", "projection_rsync_targets", "projection_ips", "projection_servers",
               "projection_cdn_dirs", "projection_files", "projection_batches")


class LoopThread:
    """An asyncio loop on a thread of its own, for in-process consumers beside synchronous test code."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Awaitable[T], timeout: float = 60) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)  # type: ignore[arg-type]
        return future.result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def _json_value(value: Any) -> Any:
    # JSON columns compare by content: their key order is the order events happened to arrive in.
    if isinstance(value, str) and value[:1] in ("{", "["):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def view_diff(a: dict[str, list[dict[str, Any]]], b: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Where two view snapshots differ, one line per column (an empty list: the same view)."""
    lines = []
    for table in sorted(set(a) | set(b)):
        rows_a, rows_b = a.get(table, []), b.get(table, [])
        if len(rows_a) != len(rows_b):
            lines.append(f"{table}: {len(rows_a)} rows != {len(rows_b)}")
            continue
        for row_a, row_b in zip(rows_a, rows_b, strict=True):
            for column in sorted(set(row_a) | set(row_b)):
                if row_a.get(column) != row_b.get(column):
                    lines.append(f"{table}.{column}: {row_a.get(column)!r} != {row_b.get(column)!r}")
    return lines


def view_snapshot(db_path: Path, update_id: str) -> dict[str, list[dict[str, Any]]]:
    """Every view row of one update, table by table, in key order (the status view as stored)."""
    snapshot: dict[str, list[dict[str, Any]]] = {}
    with closing(sqlite3.connect(db_path)) as db:
        db.row_factory = sqlite3.Row
        for table in VIEW_TABLES:
            rows = db.execute(f"SELECT * FROM {table} WHERE updateid = ?", (update_id,)).fetchall()
            plain = [{k: _json_value(v) for k, v in dict(r).items()} for r in rows]
            snapshot[table] = sorted(plain, key=lambda r: json.dumps(r, sort_keys=True))
    return snapshot


def erlang_commands(*commands: str) -> Configure:
    """A config tweak: the project's Erlang command list (e.g. ``c:l(role_server).`` plus a bump and a sleep)."""

    def tweak(config: dict[str, Any]) -> None:
        config["projects"][PROJECT]["erlang_cmd_list"] = list(commands)
        # The project allows exactly these commands besides hot loading (a bump, a sleep: test forms).
        config["projects"][PROJECT]["erlang_cmd_allowed"] = [
            *DEFAULT_ERLANG_CMD_ALLOWED, *(re.escape(erlang_command_form(c)) for c in commands)]

    return tweak


@dataclass
class System:
    world: World
    amqp_url: str
    nodes: ErlangNodes
    components: Components
    http: httpx.Client
    stack: ExitStack = field(repr=False)

    # -- the operator's side (the CMDB's HTTP API) -------------------------------------------
    def post_update(self, update_type: str = "hot_server", version: str = "004200000") -> str:
        body: dict[str, Any] = {"project": PROJECT, "area": AREA_NAME, "update_type": update_type,
                                "version": version}
        if update_type == "hot_client":
            body["client_type"] = 0
        response = self.http.post("/api/updates", json=body)
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    def update(self, update_id: str) -> dict[str, Any]:
        response = self.http.get(f"/api/updates/{update_id}")
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body

    def push(self, update_id: str) -> None:
        response = self.http.post(f"/api/updates/{update_id}/push", json={})
        assert response.status_code < 400, response.text

    def wait_state(self, update_id: str, states: set[str], timeout: float = 90) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            update = self.update(update_id)
            if update["state"] in states:
                return update
            if time.monotonic() > deadline:
                raise AssertionError(f"update {update_id} still {update['state']} after {timeout:.0f}s; "
                                     f"logs in {self.world.logs}")
            time.sleep(0.2)

    def run_hot_server(self, timeout: float = 120) -> dict[str, Any]:
        """A whole hot_server update: request, wait for the pull, push, wait for a final state."""
        update_id = self.post_update()
        pulled = self.wait_state(update_id, {"pulled"} | FINAL, timeout)
        assert pulled["state"] == "pulled", pulled
        self.push(update_id)
        return self.wait_state(update_id, FINAL, timeout)

    # -- processes ---------------------------------------------------------------------------
    def kill9(self, name: str) -> None:
        self.components.children.kill(name)

    def start_again(self, name: str) -> None:
        """Start component ``name`` with the command line it had; wait until it consumes again."""
        self.components.children.start(name, *self.components.argv[name])
        queue = {"file_pull": "hotupdate.file_pull.recv1", "file_push": "hotupdate.file_push.recv1",
                 "ops_executor": "hotupdate.ops_executor.ops1", "projection": "hotupdate.projection",
                 "cmdb": "hotupdate.cmdb"}.get(name)
        if queue is not None:
            wait_consumers(self.amqp_url, [queue], self.components.children)

    def rsync_calls(self) -> int:
        path = self.world.root / "rsync.calls"
        return len(path.read_text().splitlines()) if path.exists() else 0

    def hold_rsync(self, hold: bool) -> None:
        """While held, every push's rsync waits before it starts (the file_push handler is mid-push)."""
        marker = self.world.root / "slow_rsync"
        if hold:
            marker.touch()
        else:
            marker.unlink(missing_ok=True)

    # -- side effects and the projection's log -----------------------------------------------
    def runs(self) -> dict[str, int]:
        """How many times each game server ran ``bump/0`` (bytes in its ``runs`` file)."""
        counts = {}
        for _group, ip, server in self.world.all_servers():
            path = self.world.server_dir(ip, server) / "runs"
            counts[server] = len(path.read_bytes()) if path.exists() else 0
        return counts

    def event_log(self) -> list[tuple[str, str, str]]:
        """(event id, type, update id) of every event in the projection's log, in log order."""
        path = self.world.root / "db" / "projection.db"
        with sqlite3.connect(path) as db:
            rows = db.execute("SELECT event_id, type, updateid FROM projection_event_log ORDER BY position").fetchall()
        return [(str(a), str(b), str(c)) for a, b, c in rows]

    def event_counts(self, update_id: str) -> Counter[str]:
        return Counter(t for _id, t, u in self.event_log() if u == update_id)

    def wait_logged(self, update_id: str, event_type: str, count: int = 1, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while self.event_counts(update_id)[event_type] < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{event_type} x{count} of {update_id} not in the log: "
                                     f"{self.event_counts(update_id)}")
            time.sleep(0.2)

    def wait_until(self, predicate: Callable[[], bool], what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; logs in {self.world.logs}")
            time.sleep(0.05)


def expected_runs(world: World, per_server: int = 1) -> dict[str, int]:
    from demo.world import FAILING

    return {s: (0 if s == FAILING else per_server) for _g, _ip, s in world.all_servers()}


RSYNC_WRAPPER = """#!/bin/sh
# The test rig's rsync: counts calls, and stalls while the test asks for a slow push.
echo "$*" >> "{root}/rsync.calls"
while [ -e "{root}/slow_rsync" ]; do sleep 0.1; done
exec {rsync} "$@"
"""


def _rsync_wrapper(root: Path) -> str:
    """A PATH for the components whose ``rsync`` is :data:`RSYNC_WRAPPER`."""
    real = shutil.which("rsync")
    assert real is not None, "rsync is not installed"
    bin_dir = root / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    wrapper = bin_dir / "rsync"
    wrapper.write_text(RSYNC_WRAPPER.format(root=root, rsync=real), encoding="utf-8")
    wrapper.chmod(0o755)
    return f"{bin_dir}:{os.environ.get('PATH', '')}"


@contextmanager
def running_system(root: Path, amqp_url: str, configure: Configure | None = None,
                   servers: dict[str, dict[str, list[str]]] | None = None) -> Iterator[System]:
    """Build the demo world (or one with ``servers`` as its inventory) under ``root`` for ``amqp_url``, start
    everything, stop it all afterwards."""
    with ExitStack() as stack:
        daemon = RsyncDaemon(root / "rsyncd", password=secrets.token_urlsafe(16)).start()
        stack.callback(daemon.stop)
        world = World(root, amqp_url, daemon.port, daemon.password)
        if servers is not None:
            world.servers = servers
        build(world)
        if configure is not None:
            config = yaml.safe_load(world.config_file.read_text(encoding="utf-8"))
            configure(config)
            world.config_file.write_text(yaml.safe_dump(config, allow_unicode=True, sort_keys=False),
                                         encoding="utf-8")
        # Node names must not clash with another test's (or the demo's) nodes on this host.
        nodes = ErlangNodes(world.cookie)
        stack.callback(nodes.stop_all)
        for _group, ip, server in world.all_servers():
            nodes.start(world.node(server), world.server_dir(ip, server), code_dir(world, ip, server))
        components = start_components(world, amqp_url, stack, extra_env={"PATH": _rsync_wrapper(root)})
        http = httpx.Client(base_url=components.cmdb_url, headers={"Authorization": f"Bearer {world.token}"},
                            timeout=30)
        stack.callback(http.close)
        yield System(world, amqp_url, nodes, components, http, stack)
