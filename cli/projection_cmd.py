"""``hotupdate projection run``, ``hotupdate dashboard serve`` and ``hotupdate db upgrade``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

from sqlalchemy.engine import make_url

from bus.identity import identity_from_config
from domain.config import DEFAULT_AMQP_URL, ConfigError, HotupdateConfig, broker_address_from_env, load_config
from domain.db import migration_branches, upgrade

log = logging.getLogger(__name__)

_FALLBACK_DB_URL = "sqlite:///projection.db"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    projection = sub.add_parser("projection", help="the event log and status view every dashboard reads")
    projection_sub = projection.add_subparsers(dest="projection_command", required=True)
    run = projection_sub.add_parser("run", help="consume every event into the log and the status view")
    _database_url_argument(run)
    run.add_argument("--amqp-url", default=None, help="broker URL (env HOTUPDATE_AMQP_URL, else the config's)")
    run.add_argument("--namespace", default="hotupdate", help="exchange/queue name prefix")
    run.add_argument("--prefetch", type=int, default=2000,
                     help="unacked messages in flight; a batch is at most half of it (bigger batches cost less "
                     "per event)")
    run.add_argument("--config", default=None,
                     help="configuration file (env HOTUPDATE_CONFIG): who may publish what is derived from it")
    run.add_argument("--metrics-port", type=int, default=None,
                     help="serve /metrics, /healthz, /readyz on this port (default: telemetry.listen_ports.projection)")
    run.add_argument("--history-stream", action="store_true",
                     help="also keep every event in the broker's stream <namespace>.history, for AMQP clients "
                          "(hotupdate history read); the SQL log stays the audit record")
    run.add_argument("--single-active-consumer", action="store_true",
                     help="for two or more instances: one consumes, the others take over when it goes (also "
                          "projection.single_active_consumer in the config; fixed when the queue is first declared)")
    run.set_defaults(func=_run)

    dashboard = sub.add_parser("dashboard", help="the read-only status dashboard")
    dashboard_sub = dashboard.add_subparsers(dest="dashboard_command", required=True)
    serve = dashboard_sub.add_parser("serve", help="serve the dashboard over HTTP(S)")
    _database_url_argument(serve)
    serve.add_argument("--config", default=None,
                       help="configuration file (env HOTUPDATE_CONFIG): its dashboard section says who may sign in")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--workers", type=int, default=1,
                       help="worker processes on the one port (the dashboard keeps no state: one per core scales it)")
    serve.set_defaults(func=_serve)

    db = sub.add_parser("db", help="database migrations")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    up = db_sub.add_parser("upgrade", help="migrate a database to the newest schema of the named branches")
    up.add_argument("--url", default=os.environ.get("HOTUPDATE_DB_URL"), help="database URL (env HOTUPDATE_DB_URL)")
    up.add_argument(
        "--branch", action="append", choices=sorted(migration_branches()), default=None,
        help="a component's branch (repeatable); default: every branch",
    )
    up.set_defaults(func=_upgrade)


def _database_url_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database-url",
        default=os.environ.get("HOTUPDATE_PROJECTION_DB_URL"),
        help="the projection's database (env HOTUPDATE_PROJECTION_DB_URL, else the config's, else "
        f"{_FALLBACK_DB_URL})",
    )


def _from_config(args: argparse.Namespace) -> tuple[str, str]:
    """(database URL, broker URL): flags and environment first, then the configuration file if there is one."""
    flag_url = getattr(args, "amqp_url", None)
    database_url, amqp_url = args.database_url, flag_url or os.environ.get("HOTUPDATE_AMQP_URL")
    if database_url and amqp_url:  # no configuration needed: the TLS files come from the environment
        return database_url, broker_address_from_env(amqp_url)
    if args.config or os.environ.get("HOTUPDATE_CONFIG"):
        config = load_config(args.config)  # its amqp_url is HOTUPDATE_AMQP_URL's when set, with broker.tls
        amqp_url = broker_address_from_env(flag_url) if flag_url else config.amqp_url
        return database_url or config.projection.database_url, amqp_url
    # without a configuration the TLS files come from the environment
    return database_url or _FALLBACK_DB_URL, broker_address_from_env(amqp_url or DEFAULT_AMQP_URL)


def _run_config(args: argparse.Namespace) -> HotupdateConfig:
    """``projection run`` needs the configuration: who may publish what (bus/identity.py) and the
    cluster's queue settings (broker.quorum_*, projection.single_active_consumer) come from it."""
    if not (args.config or os.environ.get("HOTUPDATE_CONFIG")):
        raise ConfigError("projection run needs the configuration (--config or HOTUPDATE_CONFIG) to know which "
                          "broker user may publish which event (bus/identity.py)")
    return load_config(args.config)


def _run(args: argparse.Namespace) -> int:
    from bus.topology import topology_for
    from projections.service import build_service, run

    try:
        database_url, amqp_url = _from_config(args)
        config = _run_config(args)
    except ValueError as exc:  # ConfigError, or a broker address that cannot be read
        print(exc, file=sys.stderr)
        return 2
    topology = topology_for(config, args.namespace)
    consumer, projection = build_service(
        amqp_url=amqp_url, database_url=database_url, topology=topology, prefetch=args.prefetch,
        identity=identity_from_config(config),
        single_active_consumer=args.single_active_consumer or config.projection.single_active_consumer,
    )

    from bus.health import HealthListener, listen_port
    from bus.tracing import setup_tracing

    telemetry = config.telemetry
    port = listen_port(telemetry.listen_ports, consumer.name, args.metrics_port)
    stop_tracing = setup_tracing(telemetry, consumer.name)

    async def main() -> None:
        listener = HealthListener(consumer.name, [consumer], host=telemetry.listen_host, port=port) \
            if port is not None else None
        if listener is not None:
            await listener.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        if args.history_stream:
            from bus.history import ensure_history

            await ensure_history(amqp_url, topology)
        try:
            await run(consumer, projection, stop)
        finally:
            if listener is not None:
                await listener.stop()

    log.info("projection: consuming every event into %s", _redact(database_url))
    try:
        asyncio.run(main())
    finally:
        stop_tracing()
    return 0


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from bus.unroutable import UnroutableGauge
    from projections.dashboard import create_app
    from projections.dashboard.served import (
        FACTORY,
        DashboardSetupError,
        check_access,
        serve_workers,
        session_secret,
    )

    config_file = args.config or os.environ.get("HOTUPDATE_CONFIG")
    if not config_file:
        print("the dashboard needs its configuration (--config or HOTUPDATE_CONFIG): its dashboard section "
              "says who may sign in and what each sees", file=sys.stderr)
        return 2
    try:
        config = load_config(config_file)
        check_access(config.dashboard)
        secret = session_secret(config.dashboard)
    except (ConfigError, DashboardSetupError) as exc:
        print(exc, file=sys.stderr)
        return 2
    database_url = args.database_url or config.projection.database_url
    if args.workers < 1:
        print("--workers must be at least 1", file=sys.stderr)
        return 2
    # Make sure the tables exist (idempotent) before the read-only app opens the database.
    upgrade(database_url, "projection")
    https = config.dashboard.https
    certfile, keyfile = (https.certfile, https.keyfile) if https else (None, None)
    # Open live streams end on shutdown after this long instead of holding it up.
    if args.workers == 1:
        app = create_app(database_url, access=config.dashboard, session_secret=secret,
                         unroutable=UnroutableGauge(config.amqp_url),
                         metrics_token_sha256=config.telemetry.metrics_token_sha256)
        uvicorn.run(app, host=args.host, port=args.port, timeout_graceful_shutdown=2, log_level="info",
                    ssl_certfile=certfile, ssl_keyfile=keyfile)
        return 0
    serve_workers(FACTORY, database_url, config_file=Path(config_file).resolve(), secret=secret, host=args.host,
                  port=args.port, workers=args.workers, timeout_graceful_shutdown=2, log_level="info",
                  ssl_certfile=certfile, ssl_keyfile=keyfile)
    return 0


def _upgrade(args: argparse.Namespace) -> int:
    if not args.url:
        print("name the database: --url URL (or set HOTUPDATE_DB_URL)", file=sys.stderr)
        return 2
    branches = args.branch or []
    upgrade(args.url, *branches)
    print(f"{_redact(args.url)}: at the head of {', '.join(branches) if branches else 'every branch'}")
    return 0


def _redact(url: str) -> str:
    """A URL fit for logs: no password."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy understands: say nothing of it
        return "<database>"
