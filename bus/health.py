"""The consumers' small HTTP listener: ``/metrics``, ``/healthz``, ``/readyz``.

A bare ASGI app served by uvicorn in the consumer's own event loop (no extra thread, no web
framework): ``/healthz`` answers while the process runs; ``/readyz`` answers 200 only when
every service consumes on an open broker connection and its database answers, else 503 with
what failed; ``/metrics`` refreshes the queue gauges (passive declares, two seconds at most)
and renders the process's metrics. The listener binds loopback unless configured otherwise
(``telemetry.listen_host``): it serves no secrets, but it is not meant for the world.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import uvicorn

from bus.consumer import ConsumerService
from bus.health_routes import Check, readiness
from bus.metrics import exposition
from bus.queue_stats import publish_gauges

log = logging.getLogger(__name__)



class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the consumer process stops its parts together."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class HealthListener:
    """Serves one process's metrics and health on ``host:port`` until :meth:`stop`."""

    def __init__(self, component: str, services: Sequence[ConsumerService], *, host: str = "127.0.0.1",
                 port: int = 0, checks: Sequence[Check] = ()) -> None:
        self.component = component
        self._services = tuple(services)
        self._checks = tuple(checks)
        self._socket = socket.create_server((host, port))  # bound now: a port in use fails before anything starts
        self.port: int = self._socket.getsockname()[1]
        self._server = _Server(uvicorn.Config(self._app, log_config=None, lifespan="off", access_log=False,
                                                 interface="asgi3"))
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._server.serve(sockets=[self._socket]),
                                                            name=f"{self.component}-health")

    async def stop(self) -> None:
        self._server.should_exit = True
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        self._socket.close()

    async def readiness(self) -> dict[str, bool]:
        checks: dict[str, bool] = {}
        for service in self._services:
            checks.update(await service.readiness())
        for check in self._checks:
            checks.update(await check())
        return checks

    async def _app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        path = scope.get("path", "")
        if path == "/healthz":
            await _respond(send, 200, b'{"status":"ok"}', "application/json")
        elif path == "/readyz":
            status, body = readiness(self.component, await self.readiness())
            await _respond(send, status, body, "application/json")
        elif path == "/metrics":
            await self._refresh_queues()
            body, content_type = exposition()
            await _respond(send, 200, body, content_type)
        else:
            await _respond(send, 404, b"not found\n", "text/plain")

    async def _refresh_queues(self) -> None:
        for service in self._services:
            try:
                publish_gauges(await asyncio.wait_for(service.queue_depths(), timeout=2))
            except Exception as exc:  # the broker is away: the gauges keep their last values
                log.debug("queue depths of %s unavailable: %r", service.name, exc)


async def _respond(send: Any, status: int, body: bytes, content_type: str) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def listen_port(telemetry_ports: Mapping[str, int], service: str, given: int | None) -> int | None:
    """The listener's port: the command line's, else the configuration's for ``service``; None: no listener."""
    return given if given is not None else telemetry_ports.get(service)


async def serve_observed(*services: ConsumerService, component: str, host: str, port: int | None,
                         checks: Sequence[Check] = ()) -> None:
    """Run ``services`` (:func:`bus.consumer.serve`) with their health listener when a port is given."""
    from bus.consumer import serve

    listener = HealthListener(component, services, host=host, port=port, checks=checks) if port is not None else None
    if listener is not None:
        await listener.start()
        log.info("%s serves /metrics, /healthz, /readyz on %s:%d", component, host, listener.port)
    try:
        await serve(*services)
    finally:
        if listener is not None:
            await listener.stop()
