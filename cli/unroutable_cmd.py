"""``hotupdate unroutable list|show|requeue``: events no queue was bound for (the alternate exchange's queue)."""

from __future__ import annotations

import argparse
import json
import sys

from bus.topology import Topology
from bus.unroutable import UnroutableMessage, UnroutableQueue
from cli.bus_commands import amqp_url_argument


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    unroutable = sub.add_parser(
        "unroutable", help="events no queue was bound for, kept in the unroutable queue (mandatory cannot report them)"
    )
    unroutable_sub = unroutable.add_subparsers(dest="unroutable_command", required=True)
    listing = unroutable_sub.add_parser("list", help="routing key, type, id and age of each unroutable event")
    listing.add_argument("--json", action="store_true")
    listing.add_argument("--limit", type=int, default=1000)
    listing.set_defaults(func=_list)
    show = unroutable_sub.add_parser("show", help="one unroutable event whole")
    show.add_argument("message_id")
    show.set_defaults(func=_show)
    requeue = unroutable_sub.add_parser(
        "requeue", help="publish unroutable events to the events exchange again (once their bindings exist)"
    )
    requeue.add_argument("message_ids", nargs="*", help="message ids; none with --all")
    requeue.add_argument("--all", action="store_true", help="every unroutable event")
    requeue.set_defaults(func=_requeue)
    for parser in (listing, show, requeue):
        amqp_url_argument(parser)


def _queue(args: argparse.Namespace) -> UnroutableQueue:
    return UnroutableQueue(args.amqp_url, Topology(args.namespace))


def _age(message: UnroutableMessage) -> str:
    seconds = message.age_seconds()
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def _row(message: UnroutableMessage) -> dict[str, object]:
    return {"position": message.position, "routing_key": message.routing_key, "type": message.event_type,
            "message_id": message.message_id, "age_seconds": message.age_seconds(),
            "published_at": message.published_at.isoformat() if message.published_at else None}


def _list(args: argparse.Namespace) -> int:
    messages = _queue(args).peek(args.limit)
    if args.json:
        print(json.dumps([_row(m) for m in messages], ensure_ascii=False, indent=2))
        return 0
    for m in messages:
        print(f"{m.position:>5}  {m.routing_key:<40} {m.event_type:<34} {m.message_id or '-':<38} {_age(m):>6}")
    print(f"{len(messages)} unroutable event(s) in {Topology(args.namespace).unroutable_queue}")
    return 0


def _show(args: argparse.Namespace) -> int:
    for m in _queue(args).peek(100_000):
        if m.message_id == args.message_id:
            print(f"message_id: {m.message_id}\nrouting_key: {m.routing_key}\ntype: {m.event_type}\n"
                  f"published_at: {m.published_at.isoformat() if m.published_at else '-'} ({_age(m)} ago)\n"
                  f"body:\n{m.body_text}")
            return 0
    print(f"no unroutable event {args.message_id}", file=sys.stderr)
    return 1


def _requeue(args: argparse.Namespace) -> int:
    if args.all == bool(args.message_ids):
        print("name the message ids, or pass --all (not both)", file=sys.stderr)
        return 2
    result = _queue(args).requeue(None if args.all else set(args.message_ids))
    exchange = Topology(args.namespace).events_exchange
    print(f"requeued {len(result.routed)} event(s) to {exchange}")
    for m in result.still_unroutable:
        print(f"still unroutable (no binding for {m.routing_key}; back in the queue): {m.message_id}")
    return 1 if result.still_unroutable else 0
