"""The dashboard served by several uvicorn worker processes on one port
(``hotupdate dashboard serve --workers N``).

The dashboard keeps no state of its own (it reads the projection's database and polls it for
the live stream), so it scales by processes, each with its own read-only pool. uvicorn starts
workers by importing an app factory by name, not by passing an app object: each builds its app
for the database the parent named in the environment.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from fastapi import FastAPI

from projections.dashboard.app import create_app

DATABASE_URL_ENV = "HOTUPDATE_DASHBOARD_DATABASE_URL"
FACTORY = "projections.dashboard.served:app_from_environment"


def app_from_environment() -> FastAPI:
    """The dashboard over the database named in :data:`DATABASE_URL_ENV` (set by the serving parent)."""
    url = os.environ.get(DATABASE_URL_ENV)
    if not url:
        raise RuntimeError(f"{DATABASE_URL_ENV} is not set: start workers with 'hotupdate dashboard serve --workers N'")
    return create_app(url)


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


def serve_workers(factory: str, database_url: str, *, host: str, port: int, workers: int, **uvicorn_args: Any) -> None:
    """Serve ``factory`` (an app factory's import name) with ``workers`` processes on ``host``:``port``."""
    import uvicorn

    os.environ[DATABASE_URL_ENV] = database_url  # what each worker builds its app for
    sock = listening_socket(host, port)
    try:
        uvicorn.run(factory, factory=True, workers=workers, fd=sock.fileno(), **uvicorn_args)
    finally:
        sock.close()
