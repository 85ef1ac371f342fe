"""Soak on a RabbitMQ cluster: updates for a while as in ``bench.soak``, while one node at a time restarts.

A three-node cluster of the bench's own (``tests.rabbit_cluster``: loopback, own names and ports, never
the shared broker) with quorum queues on every node (``broker.quorum_group_size: 3``); every component
is given the three nodes' addresses. While ``--concurrency`` operators run updates, a node is stopped
and started again every ``--restart-every`` seconds, one after the other (1, 2, 3, 1, …). Then the
audit of ``bench.soak``, and the counts this soak is for:

- *events lost*: events the CMDB's outbox published that are not in the projection's log, and updates
  without their final event in it (goal 0);
- *duplicates delivered*: redeliveries of an event a consumer had already handled, dropped by its
  processed store (the "already handled" lines of the components' logs): the at-least-once cost;
- *side effects repeated*: an rsync push made twice with the same arguments (goal 0).

``--nodes 1`` runs the same soak on one node of its own, without restarts: the baseline.

    .venv/bin/python -m bench.soak_cluster --seconds 150 --concurrency 8 --projects 3
    .venv/bin/python -m bench.soak_cluster --seconds 150 --concurrency 8 --projects 3 --nodes 1
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import sqlite3
import tempfile
import threading
import time
from collections import Counter
from contextlib import ExitStack, closing
from pathlib import Path

import yaml

from bench.report import Section, write
from bench.soak import Operators, _audit, _count_events, _world
from demo.rsyncd import RsyncDaemon
from demo.run import start_components
from demo.world import World
from tests.rabbit_cluster import RabbitCluster, start_cluster

# One line per rsync run: its arguments and the checksum of the file list it was given on stdin
# (--files-from=-), which names the update: the same line twice is the same push made twice.
RSYNC_WRAPPER = """#!/bin/sh
list=$(mktemp)
cat > "$list"
echo "$* $(md5sum < "$list")" >> "{calls}"
{rsync} "$@" < "$list"
status=$?
rm -f "$list"
exit $status
"""


def _rsync_counting(root: Path) -> tuple[str, Path]:
    """A PATH whose ``rsync`` records each run (arguments and file list), then runs the real one."""
    real = shutil.which("rsync")
    if real is None:
        raise SystemExit("rsync is not installed")
    bin_dir, calls = root / "bin", root / "rsync.calls"
    bin_dir.mkdir(parents=True, exist_ok=True)
    (bin_dir / "rsync").write_text(RSYNC_WRAPPER.format(calls=calls, rsync=real), encoding="utf-8")
    (bin_dir / "rsync").chmod(0o755)
    return f"{bin_dir}:{os.environ.get('PATH', '')}", calls


class Restarter:
    """Stops and starts one node after the other, every ``every`` seconds, until told to stop."""

    def __init__(self, cluster: RabbitCluster, every: float) -> None:
        self._cluster, self._every = cluster, every
        self._stop = threading.Event()
        self.restarts: list[tuple[int, float]] = []  # (node, seconds it was away)
        self.errors: list[str] = []
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(300)

    def _run(self) -> None:
        index = 0
        while not self._stop.wait(self._every):
            began = time.monotonic()
            try:
                self._cluster.restart(index)
                self._cluster.wait_members(len(self._cluster.slots))
            except Exception as exc:  # reported; the soak goes on with the nodes it has
                self.errors.append(f"restart of node {index + 1}: {exc!r}")
            self.restarts.append((index + 1, time.monotonic() - began))
            index = (index + 1) % len(self._cluster.slots)


def _quorum(world: World) -> None:
    config = yaml.safe_load(world.config_file.read_text(encoding="utf-8"))
    config.setdefault("broker", {})["quorum_group_size"] = 3
    world.config_file.write_text(yaml.safe_dump(config, allow_unicode=True, sort_keys=False), encoding="utf-8")


def _lost(world: World) -> int:
    """Events the CMDB published (its outbox) that the projection never logged."""
    with closing(sqlite3.connect(world.root / "db" / "cmdb.db")) as db:
        published = {str(r[0]) for r in db.execute(
            "SELECT event_id FROM cmdb_outbox WHERE published_at IS NOT NULL").fetchall()}
    with closing(sqlite3.connect(world.root / "db" / "projection.db")) as db:
        logged = {str(r[0]) for r in db.execute("SELECT event_id FROM projection_event_log").fetchall()}
    return len(published - logged)


def _duplicates_dropped(world: World) -> int:
    return sum(log.read_text(errors="replace").count("already handled; acking redelivery")
               for log in world.logs.glob("*.log"))


def _repeated_pushes(calls: Path) -> int:
    lines = calls.read_text().splitlines() if calls.exists() else []
    return sum(n - 1 for n in Counter(lines).values() if n > 1)


def soak(args: argparse.Namespace) -> int:
    root = Path(args.workdir or tempfile.mkdtemp(prefix="hotupdate-soak-cluster-")).resolve()
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    with ExitStack() as stack:
        cluster = start_cluster(root / "rabbit", size=args.nodes)
        stack.callback(cluster.stop)
        vhost = f"soak-{secrets.token_hex(4)}"
        cluster.add_vhost(vhost)
        address = cluster.address(vhost)
        daemon = RsyncDaemon(root / "rsyncd", password=secrets.token_urlsafe(16)).start()
        stack.callback(daemon.stop)
        world, projects = _world(root, address, daemon, args.projects, args.concurrency)
        if args.nodes > 1:
            _quorum(world)
        path, calls = _rsync_counting(root)
        components = start_components(world, address, stack, extra_env={"PATH": path})
        print(f"soak on {args.nodes} node(s): {len(projects)} projects, {args.concurrency} concurrent operators, "
              f"{args.seconds:g} s, a node restarted every {args.restart_every:g} s; work directory {root}",
              flush=True)
        operators = Operators(components.cmdb_url, world.token, projects, args.update_timeout)
        restarter = Restarter(cluster, args.restart_every) if args.nodes > 1 else None
        began = time.monotonic()
        until = began + args.seconds
        threads = [threading.Thread(target=operators.run, args=(until,), daemon=True)
                   for _ in range(args.concurrency)]
        for thread in threads:
            thread.start()
        if restarter is not None:
            restarter.start()
        for thread in threads:
            thread.join(args.seconds + args.update_timeout + 30)
        if restarter is not None:
            restarter.stop()
        elapsed = time.monotonic() - began
        dead = [c.name for c in components.children.dead()]
        states, problems = _audit(world, components.cmdb_url, world.token, operators.accepted)
        problems += [f"component {name} exited during the soak" for name in dead]
        problems += [f"operator error: {e}" for e in operators.errors[:20]]
        problems += restarter.errors if restarter is not None else []
        lost, dropped, repeated = _lost(world), _duplicates_dropped(world), _repeated_pushes(calls)
        events = _count_events(world)
        restarts = restarter.restarts if restarter is not None else []
    if not args.workdir and not problems and not lost and not repeated:
        shutil.rmtree(root, ignore_errors=True)
    finished = len(operators.results)
    rate = finished / elapsed if elapsed else 0.0
    completed = sum(1 for r in operators.results if r.state in ("completed", "failed"))
    away = f"{sum(s for _n, s in restarts) / len(restarts):.0f} s" if restarts else "-"
    print("\n== Cluster soak summary")
    print(f"nodes {args.nodes}, restarts {len(restarts)} (each away ≈ {away}); updates finished {finished} "
          f"({rate:.2f}/s), final states {dict(states)}; events logged {events}")
    print(f"events lost {lost}; duplicates delivered (dropped by processed stores) {dropped}; "
          f"side effects repeated {repeated}")
    print("audit: " + ("OK" if not problems else "FAILED"))
    for problem in problems[:50]:
        print(f"  - {problem}")
    if args.write:
        write(Section(
            name=f"soak_cluster_{args.nodes}",
            title=f"Soak on {'a three-node cluster, one node restarted at a time' if args.nodes > 1 else 'one node'}",
            goal="every update final; events lost 0; side effects repeated 0 (throughput: compare the two rows)",
            table=[
                ["nodes", "seconds", "restarts", "updates", "updates/s", "completed or failed", "events logged",
                 "events lost", "duplicates delivered", "side effects repeated", "audit"],
                [str(args.nodes), f"{elapsed:.0f}", str(len(restarts)), str(finished), f"{rate:.2f}",
                 str(completed), str(events), str(lost), str(dropped), str(repeated),
                 "ok" if not problems else f"{len(problems)} problem(s)"],
            ],
            notes=[
                f"{len(projects)} projects, {args.concurrency} concurrent operators, demo rig with no-op Erlang "
                "commands (as bench.soak); duplicates delivered are redeliveries a processed store dropped.",
                *args.note,
            ],
        ))
    return 0 if not problems and not lost and not repeated else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=150, help="how long to start new updates (default 150)")
    parser.add_argument("--concurrency", type=int, default=8, help="updates in flight at once (default 8)")
    parser.add_argument("--projects", type=int, default=3, help="projects, ssss included (default 3)")
    parser.add_argument("--nodes", type=int, default=3, choices=(1, 3), help="3: the cluster; 1: the baseline")
    parser.add_argument("--restart-every", type=float, default=30, help="seconds between node restarts")
    parser.add_argument("--update-timeout", type=float, default=180, help="bound on one update (s)")
    parser.add_argument("--workdir", default=None, help="work directory, kept (default: a temporary one)")
    parser.add_argument("--no-write", dest="write", action="store_false", help="do not touch BENCHMARKS.md")
    parser.add_argument("--note", action="append", default=[], help="a note for the section")
    return soak(parser.parse_args(argv))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
