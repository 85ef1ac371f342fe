"""``hotupdate topology declare``, ``hotupdate publish`` and ``hotupdate events docs``."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from bus.docs import write_docs
from bus.envelope import Envelope, EnvelopeError
from bus.publisher import PublishError, SyncPublisher
from bus.registry import DEFAULT_REGISTRY
from bus.topology import Topology, declare_all
from domain.config import DEFAULT_AMQP_URL, broker_address_from_env


def amqp_url_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--amqp-url",
        default=os.environ.get("HOTUPDATE_AMQP_URL", DEFAULT_AMQP_URL),
        type=broker_address_from_env,  # argparse also converts the default: both get the TLS files
        help="broker URL, or several for failover (env HOTUPDATE_AMQP_URL; TLS files from "
        "HOTUPDATE_BROKER_CA_FILE/_CERT_FILE/_KEY_FILE)",
    )
    parser.add_argument("--namespace", default="hotupdate", help="exchange/queue name prefix")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    topo = sub.add_parser("topology", help="the broker's exchanges and queues")
    topo_sub = topo.add_subparsers(dest="topology_command", required=True)
    declare = topo_sub.add_parser("declare", help="declare the exchanges (idempotent)")
    amqp_url_argument(declare)
    declare.set_defaults(func=_declare)

    pub = sub.add_parser("publish", help="validate an event (JSON file or stdin) and publish it with confirms")
    pub.add_argument("file", nargs="?", default="-", help="envelope JSON file, or - for stdin")
    amqp_url_argument(pub)
    pub.add_argument("--dry-run", action="store_true", help="validate only")
    pub.set_defaults(func=_publish)

    events = sub.add_parser("events", help="the event catalogue")
    events_sub = events.add_subparsers(dest="events_command", required=True)
    docs = events_sub.add_parser("docs", help="regenerate events.md, schemas/*.json and asyncapi.yaml")
    docs.add_argument("--root", type=Path, default=Path("."), help="repository root")
    docs.set_defaults(func=_docs)
    types = events_sub.add_parser("list", help="list the known event types")
    types.set_defaults(func=lambda _a: print("\n".join(DEFAULT_REGISTRY.all_types())) or 0)


def _declare(args: argparse.Namespace) -> int:
    asyncio.run(declare_all(args.amqp_url, Topology(args.namespace)))
    print(f"declared {Topology(args.namespace).events_exchange} and its alternate exchange")
    return 0


def _publish(args: argparse.Namespace) -> int:
    body = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    try:
        envelope = Envelope.from_bytes(body)
        DEFAULT_REGISTRY.decode(envelope)
    except EnvelopeError as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(f"valid: {envelope.type} {envelope.id} → {envelope.routing_key}")
        return 0
    try:
        with SyncPublisher(args.amqp_url, Topology(args.namespace)) as publisher:
            publisher.publish(envelope)
    except PublishError as exc:
        print(f"not published: {exc}", file=sys.stderr)
        return 1
    print(f"published {envelope.type} {envelope.id} → {envelope.routing_key}")
    return 0


def _docs(args: argparse.Namespace) -> int:
    for path in write_docs(args.root):
        print(path)
    return 0
