"""``hotupdate status``: every component of the configuration, its queue's depth and consumers, from the broker.

Passive declares (bus/queue_stats.py): no management plugin needed. A queue that does not
exist yet means its component never started; zero consumers means it is not running now.
"""

from __future__ import annotations

import argparse
import json
import sys

from bus.queue_stats import queue_stats_blocking
from bus.topology import Topology
from domain.config import ConfigError, load_config
from domain.services import configured_services


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("status", help="components, their consumers and queue depths (from the broker)")
    p.add_argument("--config", help="configuration file (default: $HOTUPDATE_CONFIG)")
    p.add_argument("--namespace", default="hotupdate", help="exchange/queue name prefix")
    p.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    p.set_defaults(func=_status)


def _status(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"hotupdate status: {exc}", file=sys.stderr)
        return 2
    topology = Topology(args.namespace)
    entries = configured_services(config)
    names = [n for e in entries for n in (topology.queue(e.service), topology.parking_queue(e.service))]
    try:
        stats = queue_stats_blocking(config.amqp_url, names)
    except Exception as exc:
        print(f"hotupdate status: the broker does not answer: {exc}", file=sys.stderr)
        return 1
    rows = []
    for entry in entries:
        queue, parked = stats.get(topology.queue(entry.service)), stats.get(topology.parking_queue(entry.service))
        rows.append({"component": entry.component, "service": entry.service,
                     "queue": topology.queue(entry.service),
                     "state": "no queue" if queue is None else ("consuming" if queue.consumers else "no consumer"),
                     "consumers": queue.consumers if queue else 0, "messages": queue.messages if queue else 0,
                     "parked": parked.messages if parked else 0})
    if args.json:
        print(json.dumps({"services": rows}, indent=2))
    else:
        print(f"{'component':<13} {'service':<28} {'state':<12} {'consumers':>9} {'messages':>9} {'parked':>7}")
        for r in rows:
            print(f"{r['component']:<13} {r['service']:<28} {r['state']:<12} {r['consumers']:>9} "
                  f"{r['messages']:>9} {r['parked']:>7}")
    return 0 if all(r["state"] == "consuming" for r in rows) else 3
