"""Soak run: many concurrent updates across several projects for a fixed time, then an audit.

Runs on the demo rig: the demo's world (version trees, an rsync daemon as the ops manager's
module, the local runner) with extra projects beside ``ssss``, every component as its own
process on a fresh vhost. Erlang commands are no-ops (an empty ``erlang_cmd_list``), so no
game-server nodes are needed; files are still pulled, pushed over rsync, verified and applied.
``--concurrency`` operators each run one update after another (request, wait for the pull,
confirm the push, wait for a final state) until ``--seconds`` have passed; in-flight updates
then finish (each bounded by ``--update-timeout``).

The audit: every update the CMDB accepted reached a final state, the projection logged an
*update completed* (or the pull/push failure) for each, and ``hotupdate log verify`` passes.
The ``ssss`` hot_server updates end "failed" by design (the demo's qq_4 cannot be applied).

    .venv/bin/python -m bench.soak --seconds 60 --concurrency 8 --projects 3
"""

from __future__ import annotations

import argparse
import copy
import itertools
import os
import secrets
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from contextlib import ExitStack, closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from bench.report import Section, write
from demo.rsyncd import RsyncDaemon
from demo.run import start_components
from demo.world import AREA_CODE, AREA_NAME, CLIENT_VERSION, PROJECT, SERVER_VERSION, World, build

FINAL = {"pull_failed", "push_failed", "completed", "failed"}
TERMINAL_EVENTS = ("hotupdate.update.completed.v2", "hotupdate.pull.failed.v1", "hotupdate.push.failed.v1")


@dataclass
class Result:
    update_id: str
    project: str
    update_type: str
    state: str
    seconds: float


def _extra_project(world: World, config: dict[str, Any], index: int) -> str:
    """Project ``soakN``: ssss's settings, its own version tree, game servers on its own IPs."""
    name = f"soak{index}"
    project = copy.deepcopy(config["projects"][PROJECT])
    project["display_name"] = name
    project["erlang_cmd_list"] = []
    for target in project["rsync_targets"]:
        target["name"] = f"{name}_{AREA_CODE}"
    servers = {
        "game": {f"127.0.{index}.11": ["g1", "g2"], f"127.0.{index}.12": ["g3", "g4"]},
        "cross": {f"127.0.{index}.21": ["c1"]},
    }
    project["inventory"][AREA_CODE]["servers"] = servers
    config["projects"][name] = project
    versions = world.root / "versions"
    for kind in ("server", "client"):
        shutil.copytree(versions / kind / PROJECT, versions / kind / name, symlinks=False)
    for ips in servers.values():
        for ip, names in ips.items():
            for server in names:
                (world.server_dir(ip, server) / "ebin").mkdir(parents=True, exist_ok=True)
    config["receivers"]["recv1"]["projects"].append(name)
    config["ops_managers"]["ops1"]["projects"].append(name)
    return name


def _world(root: Path, amqp_url: str, daemon: RsyncDaemon, projects: int, concurrency: int) -> tuple[World, list[str]]:
    world = World(root, amqp_url, daemon.port, daemon.password)
    build(world)
    config = yaml.safe_load(world.config_file.read_text(encoding="utf-8"))
    config["projects"][PROJECT]["erlang_cmd_list"] = []  # no-op commands: no game-server nodes needed
    config["ops_managers"]["ops1"]["concurrency"] = max(4, concurrency)
    names = [PROJECT] + [_extra_project(world, config, i) for i in range(1, projects)]
    world.config_file.write_text(yaml.safe_dump(config, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return world, names


def _vhost(stack: ExitStack) -> str:
    ctl = shutil.which("rabbitmqctl")
    if ctl is None:
        raise SystemExit("rabbitmqctl is needed for a fresh vhost")
    vhost = f"soak-{secrets.token_hex(6)}"
    for args in (["add_vhost", vhost], ["set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"]):
        subprocess.run([ctl, *args], check=True, capture_output=True, timeout=60)
    stack.callback(subprocess.run, [ctl, "delete_vhost", vhost], capture_output=True, timeout=60)
    return f"amqp://guest:guest@127.0.0.1:5672/{vhost}"


class Operators:
    """``concurrency`` threads, each running one update after another until the time is up."""

    def __init__(self, cmdb_url: str, token: str, projects: list[str], timeout: float) -> None:
        self._cmdb_url, self._token, self._timeout = cmdb_url, token, timeout
        self._plan = itertools.cycle([(p, t) for p in projects for t in ("hot_server", "hot_client")])
        self._lock = threading.Lock()
        self.accepted: list[str] = []
        self.results: list[Result] = []
        self.errors: list[str] = []

    def _next(self) -> tuple[str, str]:
        with self._lock:
            return next(self._plan)

    def run(self, until: float) -> None:
        with httpx.Client(base_url=self._cmdb_url, headers={"Authorization": f"Bearer {self._token}"},
                          timeout=30) as http:
            while time.monotonic() < until:
                project, update_type = self._next()
                try:
                    self._one(http, project, update_type)
                except Exception as exc:  # recorded, and the audit finds the update unfinished
                    with self._lock:
                        self.errors.append(f"{project} {update_type}: {exc!r}")

    def _one(self, http: httpx.Client, project: str, update_type: str) -> None:
        body: dict[str, Any] = {"project": project, "area": AREA_NAME, "update_type": update_type,
                                "version": SERVER_VERSION if update_type == "hot_server" else CLIENT_VERSION}
        if update_type == "hot_client":
            body["client_type"] = 0
        started = time.monotonic()
        response = http.post("/api/updates", json=body)
        response.raise_for_status()
        update_id = str(response.json()["id"])
        with self._lock:
            self.accepted.append(update_id)
        deadline = started + self._timeout
        state = self._wait(http, update_id, {"pulled"} | FINAL, deadline)
        if state == "pulled":
            http.post(f"/api/updates/{update_id}/push", json={}).raise_for_status()
            state = self._wait(http, update_id, FINAL, deadline)
        with self._lock:
            self.results.append(Result(update_id, project, update_type, state, time.monotonic() - started))

    @staticmethod
    def _wait(http: httpx.Client, update_id: str, states: set[str], deadline: float) -> str:
        while True:
            response = http.get(f"/api/updates/{update_id}")
            response.raise_for_status()
            state = str(response.json()["state"])
            if state in states or time.monotonic() > deadline:
                return state
            time.sleep(0.2)


def _audit(world: World, cmdb_url: str, token: str, accepted: list[str]) -> tuple[Counter[str], list[str]]:
    """Final states of every accepted update, and the problems found (an empty list: all good)."""
    problems: list[str] = []
    states: Counter[str] = Counter()
    with httpx.Client(base_url=cmdb_url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as http:
        for update_id in accepted:
            state = str(http.get(f"/api/updates/{update_id}").json()["state"])
            states[state] += 1
            if state not in FINAL:
                problems.append(f"update {update_id} never reached a final state (still {state})")
    db_path = world.root / "db" / "projection.db"
    deadline = time.monotonic() + 30
    while True:  # the projection may lag the CMDB by a few events
        with closing(sqlite3.connect(db_path)) as db:
            rows = db.execute(
                f"SELECT DISTINCT updateid FROM projection_event_log WHERE type IN ({','.join('?' * 3)})",
                TERMINAL_EVENTS,
            ).fetchall()
            ids = [str(r[0]) for r in db.execute("SELECT event_id FROM projection_event_log").fetchall()]
        missing = set(accepted) - {str(r[0]) for r in rows}
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    problems += [f"update {u}: no final event in the projection's log" for u in sorted(missing)]
    if len(ids) != len(set(ids)):
        problems.append(f"the projection's log holds {len(ids) - len(set(ids))} duplicate event id(s)")
    verify = subprocess.run(
        [sys.executable, "-m", "cli.main", "log", "verify", "--database-url", world.db_url("projection")],
        capture_output=True, text=True, timeout=600,
    )
    if verify.returncode != 0:
        problems.append(f"hotupdate log verify failed: {(verify.stdout + verify.stderr).strip()[-2000:]}")
    return states, problems


def soak(args: argparse.Namespace) -> int:
    root = Path(args.workdir or tempfile.mkdtemp(prefix="hotupdate-soak-")).resolve()
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    with ExitStack() as stack:
        amqp_url = _vhost(stack)
        daemon = RsyncDaemon(root / "rsyncd", password=secrets.token_urlsafe(16)).start()
        stack.callback(daemon.stop)
        world, projects = _world(root, amqp_url, daemon, args.projects, args.concurrency)
        components = start_components(world, amqp_url, stack)
        print(f"soak: {len(projects)} projects ({', '.join(projects)}), {args.concurrency} concurrent operators, "
              f"{args.seconds:g} s; work directory {root}", flush=True)
        operators = Operators(components.cmdb_url, world.token, projects, args.update_timeout)
        began = time.monotonic()
        until = began + args.seconds
        threads = [threading.Thread(target=operators.run, args=(until,), daemon=True)
                   for _ in range(args.concurrency)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(args.seconds + args.update_timeout + 30)
        elapsed = time.monotonic() - began
        dead = [c.name for c in components.children.dead()]
        states, problems = _audit(world, components.cmdb_url, world.token, operators.accepted)
        problems += [f"component {name} exited during the soak" for name in dead]
        problems += [f"operator error: {e}" for e in operators.errors[:20]]
        events = _count_events(world)
    if not args.workdir and not problems:
        shutil.rmtree(root, ignore_errors=True)
    latencies = sorted(r.seconds for r in operators.results)
    p50 = latencies[len(latencies) // 2] if latencies else 0.0
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] if latencies else 0.0
    by_kind = Counter(f"{r.project} {r.update_type} {r.state}" for r in operators.results)
    print("\n== Soak summary")
    print(f"updates accepted {len(operators.accepted)}, finished {len(operators.results)} in {elapsed:.1f} s "
          f"({len(operators.results) / elapsed:.2f}/s); events logged {events}")
    print(f"update wall time p50 {p50:.2f} s, p99 {p99:.2f} s")
    for key, count in sorted(by_kind.items()):
        print(f"  {key:<40} {count}")
    print("audit: " + ("OK: every update final, log verifies" if not problems else "FAILED"))
    for problem in problems[:50]:
        print(f"  - {problem}")
    if args.write:
        write(Section(
            name="soak",
            title="Soak: concurrent updates across projects, then an audit",
            goal="every update reaches a final state, nothing is lost, the log verifies (not a speed goal)",
            table=[
                ["seconds", "projects", "concurrency", "updates", "updates/s", "events logged",
                 "p50 update", "p99 update", "final states", "audit"],
                [f"{elapsed:.0f}", str(len(projects)), str(args.concurrency), str(len(operators.results)),
                 f"{len(operators.results) / elapsed:.2f}", str(events), f"{p50:.2f} s", f"{p99:.2f} s",
                 ", ".join(f"{s} {n}" for s, n in sorted(states.items())),
                 "ok" if not problems else f"{len(problems)} problem(s)"],
            ],
            notes=[
                "Demo rig, every component its own process, local runner, no-op Erlang commands; "
                "`ssss` hot_server updates end `failed` by design (the demo's qq_4 cannot be applied).",
                *args.note,
            ],
        ))
    return 0 if not problems else 1


def _count_events(world: World) -> int:
    with closing(sqlite3.connect(world.root / "db" / "projection.db")) as db:
        return int(db.execute("SELECT COUNT(*) FROM projection_event_log").fetchone()[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=60, help="how long to start new updates (default 60)")
    parser.add_argument("--concurrency", type=int, default=8, help="updates in flight at once (default 8)")
    parser.add_argument("--projects", type=int, default=3, help="projects, ssss included (default 3)")
    parser.add_argument("--update-timeout", type=float, default=120, help="bound on one update (s)")
    parser.add_argument("--workdir", default=None,
                        help="work directory, kept (default: a temporary one, removed unless the audit fails)")
    parser.add_argument("--no-write", dest="write", action="store_false", help="do not touch BENCHMARKS.md")
    parser.add_argument("--note", action="append", default=[], help="a note for the section")
    return soak(parser.parse_args(argv))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
