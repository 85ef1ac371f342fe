"""A consumer's /healthz, /readyz and /metrics against the real broker: ready only while it can reach it."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
from urllib.parse import quote, urlsplit, urlunsplit

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bus.consumer import ConsumerService, Reject
from bus.contract.events import PullRequested
from bus.contract.examples import EXAMPLES
from bus.contract.registry import make_envelope
from bus.health import HealthListener
from bus.idempotency import ProcessedStore
from bus.publisher import AsyncPublisher
from bus.topology import ServiceQueue, binding

pytestmark = [pytest.mark.rabbit]
PULL = EXAMPLES[0]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed when this returns: nothing listens there


def _service(url: str, name: str, handler, processed: ProcessedStore | None = None) -> ConsumerService:
    return ConsumerService(
        amqp_url=url, queue=ServiceQueue(service=name, bindings=(binding(PullRequested, project="ssss"),),
                                         retry_delays_ms=(50,)),
        handlers={PullRequested: handler}, source=f"tests/{name}", processed=processed)


def _sample(text: str, name: str, **labels: str) -> float:
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == name and labels.items() <= s.labels.items())


async def _get(listener: HealthListener, path: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{listener.port}", timeout=10) as client:
        return await client.get(path)


async def test_readyz_is_503_while_the_broker_port_is_closed_and_healthz_still_answers() -> None:
    service = _service(f"amqp://guest:guest@127.0.0.1:{_closed_port()}/", "obs_closed", lambda m, e: None)
    listener = HealthListener("obs_closed", [service])
    await listener.start()
    try:
        with pytest.raises(Exception):  # noqa: B017 - whatever the connection error, the service did not start
            await asyncio.wait_for(service.start(), timeout=15)
        assert (await _get(listener, "/healthz")).status_code == 200
        ready = await _get(listener, "/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"] == {"obs_closed.consumer": False}
        assert (await _get(listener, "/metrics")).status_code == 200  # metrics answer without the broker
    finally:
        await listener.stop()


async def test_readyz_follows_the_brokers_reachability_and_metrics_count_what_the_consumer_did(
        amqp_url, broker, tmp_path) -> None:
    # A broker user of its own, so the test can take the consumer's broker access away.
    user, password = f"obs-{secrets.token_hex(6)}", secrets.token_urlsafe(12)
    vhost = urlsplit(amqp_url).path.lstrip("/")
    broker.rabbitmqctl("add_user", user, password)
    try:
        broker.rabbitmqctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
        parts = urlsplit(amqp_url)
        own_url = urlunsplit((parts.scheme, f"{quote(user)}:{quote(password)}@{parts.hostname}:{parts.port}",
                              parts.path, "", ""))

        async def handle(msg, emit):
            if msg.envelope.updateid == "u-reject":
                raise Reject("not for us")

        service = _service(own_url, "obs_live", handle, ProcessedStore(f"sqlite:///{tmp_path / 'p.db'}", "obs_live"))
        listener = HealthListener("obs_live", [service])
        await listener.start()
        await service.start()
        try:
            ready = await _get(listener, "/readyz")
            assert ready.status_code == 200, ready.text
            assert ready.json()["checks"] == {"obs_live.consumer": True, "obs_live.database": True}
            async with AsyncPublisher(amqp_url) as pub:
                for update in ("u-1", "u-2", "u-reject"):
                    await pub.publish(make_envelope(PULL, source="tests", updateid=update, project="ssss",
                                                    area="cn"))
            for _ in range(100):
                if service.handled == 2 and service.parked == 1:
                    break
                await asyncio.sleep(0.1)
            text = (await _get(listener, "/metrics")).text
            labels = {"service": "obs_live", "event": "pull.requested"}
            assert _sample(text, "hotupdate_events_consumed_total", **labels) == 3
            assert _sample(text, "hotupdate_events_handled_total", **labels) == 2
            assert _sample(text, "hotupdate_events_parked_total", **labels) == 1
            assert _sample(text, "hotupdate_handler_duration_seconds_count", **labels) == 3
            assert _sample(text, "hotupdate_queue_consumers", queue="hotupdate.obs_live") == 1
            assert _sample(text, "hotupdate_queue_messages", queue="hotupdate.obs_live.parked") == 1

            # The broker closes the connections of a deleted user; the consumer cannot log in again.
            broker.rabbitmqctl("delete_user", user)
            for _ in range(100):
                ready = await _get(listener, "/readyz")
                if ready.status_code == 503:
                    break
                await asyncio.sleep(0.1)
            assert ready.status_code == 503, ready.text
            assert ready.json()["checks"]["obs_live.consumer"] is False

            # Access back: the robust connection logs in again, and the consumer is ready again.
            broker.rabbitmqctl("add_user", user, password)
            broker.rabbitmqctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
            for _ in range(300):
                ready = await _get(listener, "/readyz")
                if ready.status_code == 200:
                    break
                await asyncio.sleep(0.1)
            assert ready.status_code == 200, ready.text
        finally:
            await service.stop(timeout=5)
            await listener.stop()
    finally:
        with contextlib.suppress(RuntimeError):  # deleted already if the test stopped half-way
            broker.rabbitmqctl("delete_user", user)
