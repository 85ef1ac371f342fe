"""``hotupdate parked list|show|requeue|purge``: the quarantine."""

from __future__ import annotations

import argparse
import json
import sys

from bus.contract.envelope import CONFLICT_PREFIX
from bus.parking import ParkingQueues
from bus.topology import Topology
from cli.bus_commands import amqp_url_argument


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parked = sub.add_parser("parked", help="messages a service parked (malformed, or out of tries), with reasons")
    parked_sub = parked.add_subparsers(dest="parked_command", required=True)
    for name, func, help_text in (
        ("list", _list, "list a service's parked messages and why"),
        ("show", _show, "show one parked message whole"),
        ("requeue", _requeue, "send parked messages back to the service's queue (after a fix)"),
        ("purge", _purge, "delete parked messages: the only way they are deleted"),
    ):
        p = parked_sub.add_parser(name, help=help_text)
        p.add_argument("service", help="the consuming service, e.g. file_pull.file_push8, projection")
        amqp_url_argument(p)
        if name in ("show",):
            p.add_argument("message_id")
        if name in ("requeue", "purge"):
            p.add_argument("message_ids", nargs="*", help="message ids; none with --all")
            p.add_argument("--all", action="store_true", help="every parked message of the service")
        if name == "list":
            p.add_argument("--json", action="store_true")
            p.add_argument("--limit", type=int, default=1000)
        p.set_defaults(func=func)


def _queues(args: argparse.Namespace) -> ParkingQueues:
    return ParkingQueues(args.amqp_url, Topology(args.namespace))


def _selection(args: argparse.Namespace) -> set[str] | None:
    if args.all and args.message_ids:
        raise SystemExit("give message ids or --all, not both")
    if not args.all and not args.message_ids:
        raise SystemExit("name the message ids, or pass --all")
    return None if args.all else set(args.message_ids)


def _list(args: argparse.Namespace) -> int:
    messages = _queues(args).peek(args.service, args.limit)
    if args.json:
        rows = [{"position": m.position, "message_id": m.message_id, "reason": m.reason,
                 "parked_at": m.parked_at, "routing_key": m.routing_key,
                 "conflict": m.reason.startswith(CONFLICT_PREFIX)} for m in messages]
        print(json.dumps(rows, ensure_ascii=False, indent=2))
        return 0
    for m in messages:
        print(f"{m.position:>5}  {m.message_id or '-':<38} {m.parked_at:<33} {m.routing_key}\n       {m.reason}")
    conflicts = sum(m.reason.startswith(CONFLICT_PREFIX) for m in messages)
    # A conflict needs a decision (which of two events under one id is genuine), not a requeue.
    note = f", {conflicts} of them conflicts (one id, two different events: docs/audit.md)" if conflicts else ""
    print(f"{len(messages)} parked message(s) for {args.service}{note}")
    return 0


def _show(args: argparse.Namespace) -> int:
    for m in _queues(args).peek(args.service, 100_000):
        if m.message_id == args.message_id:
            print(f"message_id: {m.message_id}\nreason: {m.reason}\nparked_at: {m.parked_at}\n"
                  f"routing_key: {m.routing_key}\nbody:\n{m.body_text}")
            return 0
    print(f"no parked message {args.message_id} for {args.service}", file=sys.stderr)
    return 1


def _requeue(args: argparse.Namespace) -> int:
    done = _queues(args).requeue(args.service, _selection(args))
    print(f"requeued {len(done)} message(s) to {Topology(args.namespace).queue(args.service)}")
    return 0


def _purge(args: argparse.Namespace) -> int:
    done = _queues(args).purge(args.service, _selection(args))
    print(f"purged {len(done)} message(s) from {Topology(args.namespace).parking_queue(args.service)}")
    return 0

