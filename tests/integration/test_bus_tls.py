"""TLS to the broker, against a real TLS listener: a RabbitMQ node of the test's own (tests/rabbit_node.py)
whose certificate names only ``localhost`` and which requires a client certificate from the test CA."""

from __future__ import annotations

import asyncio
import ssl
import uuid
from collections.abc import Iterator
from pathlib import Path

import pika.exceptions
import pytest

from bus.connection import connect_blocking, connect_robust
from bus.consumer import ConsumerService
from bus.contract.events import PullRequested
from bus.contract.examples import EXAMPLES
from bus.contract.registry import make_envelope
from bus.handling import Emitter, Incoming
from bus.publisher import AsyncPublisher, PublishError, SyncPublisher
from bus.topology import ServiceQueue, Topology, binding
from domain.broker_address import with_tls_files
from tests.rabbit_node import Pki, RabbitNode, ServerTls, make_pki, start_node

pytestmark = [pytest.mark.rabbit, pytest.mark.slow]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_node(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[RabbitNode]:
    node = start_node(tmp_path_factory.mktemp("tls-node"), tls=ServerTls(pki.ca, pki.server_cert, pki.server_key))
    yield node
    node.stop()


@pytest.fixture
def vhost(tls_node: RabbitNode) -> Iterator[str]:
    name = f"tls-{uuid.uuid4().hex[:8]}"
    tls_node.ctl("add_vhost", name)
    tls_node.ctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
    yield name
    tls_node.ctl("delete_vhost", name)


def _address(node: RabbitNode, vhost: str, *, ca: Path | None, cert: Path | None = None, key: Path | None = None,
             host: str = "localhost") -> str:
    return with_tls_files(node.tls_url(vhost, host=host), ca_file=str(ca) if ca else None,
                          cert_file=str(cert) if cert else None, key_file=str(key) if key else None)


def _envelope(updateid: str):
    return make_envelope(EXAMPLES[0], source="tests", updateid=updateid, project="ssss", area="cn")


async def test_events_travel_through_the_tls_listener_with_both_client_libraries(tls_node, pki, vhost):
    address = _address(tls_node, vhost, ca=pki.ca, cert=pki.client_cert, key=pki.client_key)
    received: list[str] = []

    async def handle(msg: Incoming[PullRequested], _emit: Emitter) -> None:
        received.append(msg.envelope.id)

    spec = ServiceQueue(service="tls_probe", bindings=(binding(PullRequested, project="ssss"),))
    service = ConsumerService(amqp_url=address, queue=spec, handlers={PullRequested: handle}, source="hotupdate/tests")
    await service.start()  # aio-pika: declares and consumes over TLS
    try:
        by_pika = _envelope("u-pika")
        with SyncPublisher(address) as publisher:  # pika publishes over TLS
            await asyncio.to_thread(publisher.publish, by_pika)
        for _ in range(100):
            if received:
                break
            await asyncio.sleep(0.1)
        assert received == [by_pika.id]
        connections = tls_node.ctl("list_connections", "vhost", "ssl", "peer_cert_subject")
    finally:
        await service.stop()
    # every connection in this vhost is TLS and shows the test client's certificate
    rows = [line.split("\t") for line in connections.splitlines() if line.startswith(vhost)]
    assert rows and all(r[1] == "true" and "hotupdate-test-client" in r[2] for r in rows), connections

    by_aio_pika = _envelope("u-aio-pika")
    async with AsyncPublisher(address) as publisher:  # aio-pika publishes over TLS
        await publisher.publish(by_aio_pika)

    def get_with_pika() -> bytes | None:  # pika consumes over TLS
        connection = connect_blocking(address)
        try:
            method, _props, body = connection.channel().basic_get(Topology().queue("tls_probe"), auto_ack=True)
            return body if method is not None else None
        finally:
            connection.close()

    body = await asyncio.to_thread(get_with_pika)
    assert body is not None and by_aio_pika.id.encode() in body


def _cases(pki: Pki) -> dict[str, dict[str, Path | str | None]]:
    return {
        # the client does not trust the CA that signed the broker's certificate
        "untrusted_ca": {"ca": pki.other_ca, "cert": pki.client_cert, "key": pki.client_key},
        # the broker's certificate names localhost, not 127.0.0.1: the host name check refuses it
        "wrong_host_name": {"ca": pki.ca, "cert": pki.client_cert, "key": pki.client_key, "host": "127.0.0.1"},
        # fail_if_no_peer_cert: the broker refuses a client without a certificate
        "no_client_cert": {"ca": pki.ca},
        # ... and one whose certificate its CA did not sign
        "stranger_cert": {"ca": pki.ca, "cert": pki.stranger_cert, "key": pki.stranger_key},
    }


CLIENT_SIDE = {"untrusted_ca": "certificate verify failed", "wrong_host_name": "mismatch"}


@pytest.mark.parametrize("case", ["untrusted_ca", "wrong_host_name", "no_client_cert", "stranger_cert"])
async def test_a_connection_that_fails_tls_verification_is_refused_by_both_libraries(tls_node, pki, vhost, case):
    address = _address(tls_node, vhost, **_cases(pki)[case])  # type: ignore[arg-type]
    with pytest.raises(Exception) as aio:  # aiormq's errors have no narrower common base
        connection = await connect_robust(address, timeout=10)
        await connection.close()
    with pytest.raises((pika.exceptions.AMQPConnectionError, ssl.SSLError)) as blocking:
        await asyncio.to_thread(connect_blocking, address)
    if case in CLIENT_SIDE:
        assert CLIENT_SIDE[case] in str(aio.value)
        assert CLIENT_SIDE[case] in str(blocking.value)
    with pytest.raises(PublishError):  # a component's publisher says so instead of publishing in clear
        await asyncio.to_thread(SyncPublisher(address, retry_seconds=0.5).publish, _envelope("u-refused"))
    # nothing got through to the vhost
    assert vhost not in tls_node.ctl("list_connections", "vhost")
