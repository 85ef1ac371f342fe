"""``hotupdate consume <role>``: run one machine's consumer service until SIGTERM/SIGINT.

Each role is one row of :data:`ROLES`: its subcommand, the option naming the machine in
the configuration, and the composition root that builds the service. Adding a consumer
(the ops executor, say) is adding a row.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from dataclasses import dataclass
from typing import Protocol

from bus.consumer import ConsumerService
from bus.health import listen_port, serve_observed
from bus.tracing import setup_tracing
from consumers.file_pull import service as file_pull
from consumers.file_push import service as file_push
from consumers.notifier import service as notifier
from consumers.ops_executor import service as ops_executor
from domain.config import ConfigError, HotupdateConfig, load_config

log = logging.getLogger(__name__)


class ServiceFactory(Protocol):
    def __call__(self, config: HotupdateConfig, name: str, /, *, processed_url: str | None) -> ConsumerService:
        """Build the consumer service of the machine ``name`` of ``config``."""
        ...


@dataclass(frozen=True)
class Role:
    command: str
    help: str
    machine_option: str  # e.g. "--receiver": which machine of the config this process is
    machine_help: str
    service_prefix: str  # the service (and queue) is "<prefix>.<machine>"
    factory: ServiceFactory
    machine_default: str | None = None  # a role with one usual process; its service is then just "<prefix>"

    def service_name(self, machine: str) -> str:
        if machine == self.machine_default:
            return self.service_prefix
        return f"{self.service_prefix}.{machine}"


ROLES: tuple[Role, ...] = (
    Role(
        "file-pull",
        "copy versions to update backups on a version receiver (pull requested → files pulled)",
        "--receiver",
        "the version receiver's name under receivers: in the config",
        file_pull.ROLE,
        file_pull.build_service,
    ),
    Role(
        "file-push",
        "rsync chosen files to the ops managers from a version receiver (push requested → files pushed)",
        "--receiver",
        "the version receiver's name under receivers: in the config",
        file_push.ROLE,
        file_push.build_service,
    ),
    Role(
        "ops-executor",
        "run hot updates on an ops manager (update requested → update started, IP/CDN dir finished, completed)",
        "--ops-manager",
        "the ops manager's name under ops_managers: in the config",
        ops_executor.ROLE,
        ops_executor.build_service,
    ),
    Role(
        "notifier",
        "call each project's webhooks when an update completes or fails (signed, retried, recorded)",
        "--name",
        "another notifier's name (its queue is notifier.<name>); the usual one is 'notifier'",
        notifier.ROLE,
        notifier.build_service,
        machine_default=notifier.ROLE,
    ),
)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    consume = subparsers.add_parser("consume", help="run a consumer service until SIGTERM/SIGINT")
    roles = consume.add_subparsers(dest="role", required=True)
    for role in ROLES:
        p = roles.add_parser(role.command, help=role.help)
        p.add_argument("--config", help="configuration file (default: $HOTUPDATE_CONFIG)")
        p.add_argument(role.machine_option, dest="machine", required=role.machine_default is None,
                       default=role.machine_default, help=role.machine_help)
        p.add_argument(
            "--processed-db",
            help="database remembering handled events (default: sqlite:///<service>.processed.db)",
        )
        p.add_argument("--metrics-port", type=int, default=None,
                       help="serve /metrics, /healthz, /readyz on this port (default: telemetry.listen_ports of "
                       "the config for this service; none there: no listener)")
        p.set_defaults(func=_run, consume_role=role)


def processed_db_url(service_name: str, given: str | None) -> str:
    """One file per service, so two consumers on one machine do not contend for a SQLite lock."""
    return given or f"sqlite:///{service_name}.processed.db"


def _run(args: argparse.Namespace) -> int:
    role: Role = args.consume_role
    try:
        config = load_config(args.config)
        processed_url = processed_db_url(role.service_name(args.machine), args.processed_db)
        service = role.factory(config, args.machine, processed_url=processed_url)
    except ConfigError as exc:
        print(f"hotupdate consume {role.command}: {exc}", file=sys.stderr)
        return 2
    log.info("starting %s", service.name)
    telemetry = config.telemetry
    stop_tracing = setup_tracing(telemetry, service.name)
    try:
        asyncio.run(serve_observed(service, component=service.name, host=telemetry.listen_host,
                                   port=listen_port(telemetry.listen_ports, service.name, args.metrics_port)))
    finally:
        stop_tracing()  # flushes the spans not yet exported
    return 0
