"""Entry point of the ``hotupdate`` console script.

Each area contributes its subcommands through a ``register(subparsers)`` function in
its own ``cli/<area>.py`` module; this file only lists them.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

# module name → what it adds; a module missing here is a subcommand not shipped yet
SUBCOMMAND_MODULES = (
    "cli.bus_commands",  # topology declare, publish, events docs, rabbitmq provision|grant
    "cli.parked_cmd",  # parked list|show|requeue|purge
    "cli.unroutable_cmd",  # unroutable list|show|requeue
    "cli.config_cmd",  # config check
    "cli.demo_cmd",  # demo
    "cli.consume",  # consume file-pull|file-push|ops-executor|notifier
    "cli.notifier_cmd",  # notifier deliveries
    "cli.cmdb_cmd",  # cmdb serve|hash-token, update start|push|status
    "cli.projection_cmd",  # projection run, dashboard serve, db upgrade
    "cli.audit_cmd",  # log verify|export, replay (rebuild the view, or --publish a slice)
    "cli.history_cmd",  # history read (the broker's stream copy of the events)
    "cli.status_cmd",  # status (components, consumers, queue depths)
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hotupdate", description="Hot updates of online games over RabbitMQ")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    if not args.verbose:  # the AMQP clients narrate every channel at INFO
        for noisy in ("pika", "aio_pika", "aiormq", "httpx"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
