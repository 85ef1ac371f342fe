"""Running the CMDB: the HTTP API, the outbox relay, the process-manager consumer and the stall
detector in one process.

The API accepts requests even while the broker is down: they wait in the outbox, the
relay keeps retrying, and the consumer keeps trying to start, until the broker is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import Iterator

import uvicorn

from producers.cmdb.bootstrap import CmdbRuntime
from producers.cmdb.stalls import watch_stalls

log = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: this process stops all its parts together."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def run(runtime: CmdbRuntime, *, host: str, port: int, stop: asyncio.Event | None = None) -> None:
    """Serve until ``stop`` is set (or SIGTERM/SIGINT when it is not given), then stop everything in order."""
    # Bound before anything starts, so a port in use is a plain OSError for the caller
    # instead of uvicorn's sys.exit in the middle of a running event loop.
    listener = socket.create_server((host, port))
    own_signals = stop is None
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    if own_signals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    https = runtime.config.cmdb.https
    server = _Server(uvicorn.Config(runtime.api, log_config=None, lifespan="off",
                                    ssl_certfile=https.certfile if https else None,
                                    ssl_keyfile=https.keyfile if https else None))
    relay = asyncio.create_task(runtime.relay.run(stop), name="cmdb-outbox-relay")
    consumer = asyncio.create_task(_start_when_reachable(runtime, stop), name="cmdb-consumer-start")
    stalls = asyncio.create_task(
        watch_stalls(runtime.database, runtime.config.cmdb.stall_after_seconds, stop), name="cmdb-stall-detector"
    )
    http = asyncio.create_task(server.serve(sockets=[listener]), name="cmdb-http")
    try:
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({http, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
    finally:
        stop.set()
        server.should_exit = True  # finish in-flight requests, then close
        await asyncio.gather(http, return_exceptions=True)
        await asyncio.gather(stalls, return_exceptions=True)
        await asyncio.gather(relay, return_exceptions=True)
        started = await consumer
        if started:
            await runtime.consumer.stop()
        await runtime.publisher.close()
        runtime.database.close()
        listener.close()
        if own_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
        log.info("cmdb stopped")


async def _start_when_reachable(runtime: CmdbRuntime, stop: asyncio.Event) -> bool:
    """Start the consumer, retrying with backoff while the broker is unreachable; False if stopped first."""
    consumer = runtime.consumer
    delay = 0.5
    while not stop.is_set():
        try:
            await consumer.start()
            runtime.consumer_started.set()
            return True
        except Exception as exc:
            log.warning("cmdb consumer cannot start (%r); retrying in %.1fs", exc, delay)
            with contextlib.suppress(Exception):
                await consumer.stop(timeout=1)  # drop a half-open connection before the next try
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=delay)
        delay = min(delay * 2, 10.0)
    return False
