"""Serving the dashboard: its settings from the configuration, and several uvicorn worker processes
on one port (``hotupdate dashboard serve --workers N``).

The dashboard keeps no state of its own (it reads the projection's database and polls it for
the live stream), so it scales by processes, each with its own read-only pool. uvicorn starts
workers by importing an app factory by name, not by passing an app object: each builds its app
for the database and configuration the parent named in the environment, with the parent's
session key, so a session signed by one worker is good in every other.
"""

from __future__ import annotations

import os
import secrets
import socket
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from bus.unroutable import UnroutableGauge
from domain.config import DashboardConfig, load_config
from projections.dashboard.app import create_app

DATABASE_URL_ENV = "HOTUPDATE_DASHBOARD_DATABASE_URL"
SESSION_SECRET_ENV = "HOTUPDATE_DASHBOARD_SESSION_SECRET"  # noqa: S105 (the variable's name)
FACTORY = "projections.dashboard.served:app_from_environment"


class DashboardSetupError(ValueError):
    """The configuration lets no one in, or its session key file is unsafe."""


def check_access(access: DashboardConfig) -> None:
    """Refuse a dashboard no one could sign in to (it would only ever answer 401)."""
    if access.oidc is None and not any(u.token_sha256 for u in access.users.values()):
        raise DashboardSetupError(
            "dashboard: no one can sign in: configure dashboard.oidc (single sign-on) or a user with a "
            "token_sha256 under dashboard.users (docs/deploy.md, 'Dashboard sign-in')")


def session_secret(access: DashboardConfig) -> bytes:
    """The key signing session cookies: ``session_secret_file``'s, else a new random one (sessions then
    end when the dashboard restarts)."""
    path = access.session_secret_file
    if path is None:
        return secrets.token_bytes(32)
    try:
        mode = path.stat().st_mode
        key = path.read_bytes().strip()
    except OSError as exc:
        raise DashboardSetupError(f"dashboard.session_secret_file: cannot read {path}: {exc.strerror}") from None
    if mode & 0o077:
        raise DashboardSetupError(f"dashboard.session_secret_file: {path} is readable by others: chmod 600 it")
    if len(key) < 32:
        raise DashboardSetupError(f"dashboard.session_secret_file: {path}: use at least 32 bytes")
    return key


def app_from_environment() -> FastAPI:
    """The dashboard over the database named in :data:`DATABASE_URL_ENV` (set by the serving parent)."""
    url = os.environ.get(DATABASE_URL_ENV)
    secret = os.environ.get(SESSION_SECRET_ENV)
    if not url or not secret:
        raise RuntimeError(f"{DATABASE_URL_ENV} is not set: start workers with 'hotupdate dashboard serve --workers N'")
    config = load_config()
    return create_app(url, access=config.dashboard, session_secret=bytes.fromhex(secret),
                      unroutable=UnroutableGauge(config.amqp_url),
                      metrics_token_sha256=config.telemetry.metrics_token_sha256)


def listening_socket(host: str, port: int) -> socket.socket:
    """The port the workers share, with TCP_NODELAY set on it.

    uvicorn's workers accept on a socket the parent made, and nothing sets TCP_NODELAY on the
    connections they accept (one worker serving alone does): a response written in two pieces
    then waited for the client's delayed ACK, 40 ms on every keep-alive request. Linux gives
    accepted connections the listening socket's TCP_NODELAY.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.set_inheritable(True)
    return sock


def serve_workers(factory: str, database_url: str, *, config_file: Path, secret: bytes, host: str, port: int,
                  workers: int, **uvicorn_args: Any) -> None:
    """Serve ``factory`` (an app factory's import name) with ``workers`` processes on ``host``:``port``."""
    import uvicorn

    # what each worker builds its app for; the environment reaches only this process's own children
    os.environ.update({DATABASE_URL_ENV: database_url, "HOTUPDATE_CONFIG": str(config_file),
                       SESSION_SECRET_ENV: secret.hex()})
    sock = listening_socket(host, port)
    try:
        uvicorn.run(factory, factory=True, workers=workers, fd=sock.fileno(), **uvicorn_args)
    finally:
        sock.close()
