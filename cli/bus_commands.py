"""``hotupdate topology declare``, ``publish``, ``events docs`` and ``rabbitmq provision|grant``."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit

from bus.contract.envelope import Envelope, EnvelopeError
from bus.contract.registry import DEFAULT_REGISTRY
from bus.docs import write_docs
from bus.permissions import (
    GrantError,
    Rabbitmqctl,
    apply_grant,
    apply_grants,
    provision_grants,
    read_password_file,
    team_grant,
)
from bus.publisher import PublishError, SyncPublisher, broker_login
from bus.topology import Topology, declare_all
from domain.config import DEFAULT_AMQP_URL, ConfigError, broker_address_from_env, load_config


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

    rabbit = sub.add_parser("rabbitmq", help="broker users and their permissions (runs rabbitmqctl on this node)")
    rabbit_sub = rabbit.add_subparsers(dest="rabbitmq_command", required=True)
    provision = rabbit_sub.add_parser(
        "provision", help="one broker user per component instance and team of the configuration, least privilege "
        "(idempotent); declares the shared exchanges as the administrator of --amqp-url")
    provision.add_argument("--config", default=None, help="configuration file (env HOTUPDATE_CONFIG)")
    provision.add_argument("--password-dir", type=Path, required=True,
                           help="one <user>.password file per user (mode 600): read if present, else generated")
    amqp_url_argument(provision)
    provision.add_argument("--dry-run", action="store_true", help="print the permissions, change nothing")
    provision.set_defaults(func=_provision)
    grant = rabbit_sub.add_parser("grant", help="let a team's user publish every routing key of its projects "
                                  "(provision grants a team only its events: prefer broker.teams)")
    grant.add_argument("--user", required=True)
    grant.add_argument("--projects", required=True, help="comma-separated project keys")
    grant.add_argument("--vhost", default="/")
    grant.add_argument("--password-file", type=Path,
                       help="create the user (or change its password) with the password in this mode-600 file")
    grant.add_argument("--namespace", default="hotupdate")
    grant.set_defaults(func=_grant)


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


def vhost_of(url: str) -> str:
    """The vhost a broker URL names (``/`` when none), as rabbitmqctl's ``-p`` takes it."""
    path = urlsplit(url).path
    return unquote(path[1:]) if len(path) > 1 else "/"


def _provision(args: argparse.Namespace) -> int:
    topology = Topology(args.namespace)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    grants = provision_grants(config, vhost=vhost_of(args.amqp_url), topology=topology)
    if args.dry_run:
        for g in grants:
            print(f"{g.user}\n  configure {g.configure}\n  write     {g.write}\n  read      {g.read}\n"
                  f"  publish   {g.topic_write}")
        return 0
    if config.broker.shared_user:
        print(f"note: broker.shared_user is {config.broker.shared_user!r}: components still log in as that user "
              "until it is removed from the configuration", file=sys.stderr)
    # Components only look the shared exchanges up; declaring them is the administrator's part.
    asyncio.run(declare_all(args.amqp_url, topology))
    try:
        done = apply_grants(grants, Rabbitmqctl(), password_dir=args.password_dir, topology=topology)
    except GrantError as exc:
        print(f"provision failed: {exc}", file=sys.stderr)
        return 1
    print("\n".join(done) if done else f"nothing to change: {len(grants)} users as configured")
    print(f"passwords: {args.password_dir}/<user>.password; each machine's HOTUPDATE_AMQP_URL logs in as its "
          f"component's user (exchanges declared as {broker_login(args.amqp_url)})")
    return 0


def _grant(args: argparse.Namespace) -> int:
    projects = [p.strip() for p in args.projects.split(",") if p.strip()]
    topology = Topology(args.namespace)
    try:
        grant = team_grant(args.user, projects, vhost=args.vhost, topology=topology)
        password = read_password_file(args.password_file) if args.password_file else None
        apply_grant(grant, password=password, topology=topology)
    except (ValueError, OSError, GrantError) as exc:
        print(f"grant failed: {exc}", file=sys.stderr)
        return 1
    print(f"{args.user} may publish to {topology.events_exchange} "
          f"routing keys matching {grant.topic_write} on vhost {args.vhost}")
    return 0


def _docs(args: argparse.Namespace) -> int:
    for path in write_docs(args.root):
        print(path)
    return 0
