"""A consumer whose broker login stops working (a rotated password) still stops, and promptly.

Its robust connection keeps trying to log in again with the old password; stop() must not wait
for a login that will never succeed (found hanging: the service never exited on SIGTERM).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Iterator
from urllib.parse import quote, urlsplit, urlunsplit

import pytest

from bus.consumer import ConsumerService
from bus.contract.events import PullRequested
from bus.topology import ServiceQueue, binding
from tests.broker import Broker

pytestmark = [pytest.mark.rabbit]

STOP_WITHIN = 15.0  # seconds: far more than a stop needs, far less than "hangs"


@pytest.fixture
def own_user(amqp_url: str, broker: Broker) -> Iterator[tuple[str, str]]:
    """A broker user of this test's own, on the test's vhost: (user name, its URL)."""
    user, password = f"stop-{secrets.token_hex(6)}", secrets.token_urlsafe(12)
    parts = urlsplit(amqp_url)
    broker.rabbitmqctl("add_user", user, password)
    broker.rabbitmqctl("set_permissions", "-p", parts.path.lstrip("/"), user, ".*", ".*", ".*")
    try:
        yield user, urlunsplit((parts.scheme, f"{quote(user)}:{quote(password)}@{parts.hostname}:{parts.port}",
                                parts.path, "", ""))
    finally:
        with contextlib.suppress(RuntimeError):
            broker.rabbitmqctl("delete_user", user)


def _service(url: str) -> ConsumerService:
    async def handle(msg: object, emit: object) -> None:
        pass

    return ConsumerService(amqp_url=url, queue=ServiceQueue(service="stopping", bindings=(binding(PullRequested),)),
                           handlers={PullRequested: handle}, source="tests/stopping")


async def test_stop_returns_while_the_connection_cannot_log_in_again(own_user, broker: Broker) -> None:
    user, url = own_user
    service = _service(url)
    await service.start()
    assert service.ready
    # The password is rotated and the broker drops the connections: every reconnect is refused at login.
    broker.rabbitmqctl("change_password", user, secrets.token_urlsafe(12))
    broker.rabbitmqctl("close_all_user_connections", user, "password rotated")
    for _ in range(100):
        if not service.ready:
            break
        await asyncio.sleep(0.1)
    assert not service.ready
    await asyncio.sleep(2)  # a reconnect or two has been refused by now
    await asyncio.wait_for(service.stop(timeout=5), timeout=STOP_WITHIN)
    assert not service.started and service.connection is None


async def test_stop_after_a_start_refused_at_login_returns(own_user) -> None:
    _, url = own_user
    parts = urlsplit(url)
    wrong = urlunsplit((parts.scheme, f"{parts.username}:wrong-password@{parts.hostname}:{parts.port}",
                        parts.path, "", ""))
    service = _service(wrong)
    with pytest.raises(Exception):  # noqa: B017 - aiormq's login refusal has no stable public type
        await asyncio.wait_for(service.start(), timeout=STOP_WITHIN)
    await asyncio.wait_for(service.stop(timeout=5), timeout=STOP_WITHIN)
    assert not service.started
