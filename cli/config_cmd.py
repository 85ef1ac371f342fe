"""``hotupdate config check``: validate the configuration and what it points at on this machine."""

from __future__ import annotations

import argparse
import asyncio
import sys

from bus.topology import Topology, check_broker
from domain.config import ConfigError, load_config
from domain.config_check import Finding, check_config


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    config = sub.add_parser("config", help="the configuration file")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    check = config_sub.add_parser("check", help="validate the file, then directories, password files, broker")
    check.add_argument("--config", help="the YAML file (env HOTUPDATE_CONFIG)")
    check.add_argument("--receiver", help="check this version receiver's part only")
    check.add_argument("--ops-manager", help="check this ops manager's part only")
    check.add_argument("--no-broker", action="store_true", help="do not try to reach RabbitMQ")
    check.add_argument("--namespace", default="hotupdate")
    check.add_argument("--quiet", action="store_true", help="print only problems")
    check.set_defaults(func=_check)


def _check(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        # One line per problem (a contradiction names its key), so each reads like a finding below.
        problems = str(exc).splitlines()
        for line in problems:
            print(f"ERROR   {line}", file=sys.stderr)
        print(f"{len(problems)} error(s): the configuration does not load", file=sys.stderr)
        return 2
    findings = check_config(config, receiver=args.receiver, ops_manager=args.ops_manager)
    if not args.no_broker:
        problems = asyncio.run(check_broker(config.amqp_url, Topology(args.namespace)))
        findings += [Finding("error", "amqp_url", p) for p in problems] or [
            Finding("ok", "amqp_url", "broker reachable, exchanges declared")
        ]
    errors = [f for f in findings if f.level == "error"]
    for finding in findings:
        if finding.level != "ok" or not args.quiet:
            print(finding)
    print(f"{len(errors)} error(s), {sum(f.level == 'warning' for f in findings)} warning(s)")
    return 1 if errors else 0
