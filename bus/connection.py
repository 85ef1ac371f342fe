"""The one place that opens broker connections, for both client libraries, from a broker address.

A broker address (``domain/broker_address.py``) names one node or several; a connection goes to the
first that answers, in the order given. ``amqps://`` nodes are reached over TLS that verifies the
server's certificate and host name (against the address's CA file, else the system's CAs) and shows
the client certificate when the address has one. pika takes a list of parameters natively; aio-pika's
robust connection takes one URL, so :class:`FailoverConnection` carries the others: it starts on the
first node that answers and, when its node is lost, reconnects to the next one of the list.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pika
import pika.exceptions
from aio_pika.abc import AbstractConnection, AbstractRobustConnection
from aio_pika.connection import Connection
from aio_pika.robust_connection import RobustConnection
from yarl import URL

from domain.broker_address import BrokerUrl, parse_broker_address, redact

log = logging.getLogger(__name__)


def tls_context(node: BrokerUrl) -> ssl.SSLContext:
    """A client context for ``node``: server certificate and host name verified, TLS 1.2 at least."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=node.ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if node.cert_file is not None:
        context.load_cert_chain(node.cert_file, node.key_file)
    return context


def _context(node: BrokerUrl) -> ssl.SSLContext | None:
    return tls_context(node) if node.tls else None


class FailoverConnection(RobustConnection):
    """aio-pika's robust connection over the nodes of a broker address, taken round: a lost node is
    replaced by the next, and a failed reconnect attempt moves on to the one after."""

    # A node lost should be replaced within seconds, not aio-pika's default five.
    RECONNECT_INTERVAL_SECONDS = 1.0

    def __init__(self, nodes: Sequence[BrokerUrl], start: int = 0, **kwargs: Any) -> None:
        self._nodes = tuple(nodes)
        self._current = start
        self._attempted = False
        node = self._nodes[start]
        kwargs.setdefault("reconnect_interval", self.RECONNECT_INTERVAL_SECONDS)
        super().__init__(URL(node.url), ssl_context=_context(node), **kwargs)

    @property
    def node(self) -> BrokerUrl:
        """The node this connection goes to (or will reconnect to)."""
        return self._nodes[self._current]

    # aio-pika's reconnect loop begins every connection attempt by clearing the transport and then
    # connects to self.url with self.kwargs; that is the one point where each attempt can be given a
    # node. The first attempt keeps the node it was made for; each later one (after a loss, or after
    # the previous attempt failed because that node is down too) takes the next node of the list.
    @property
    def transport(self) -> Any:
        return self.__dict__.get("_transport")

    @transport.setter
    def transport(self, value: Any) -> None:
        if value is None and not self._close_called_safe():
            if self._attempted and len(self._nodes) > 1:
                self._advance()
            self._attempted = True
        self.__dict__["_transport"] = value

    def _close_called_safe(self) -> bool:
        # Connection.__init__ clears the transport before it sets _close_called.
        return bool(self.__dict__.get("_close_called", True))

    def _advance(self) -> None:
        lost = self.node
        self._current = (self._current + 1) % len(self._nodes)
        self.url = URL(self.node.url)
        self.kwargs["context"] = _context(self.node)
        log.warning("broker node %s:%s lost or unreachable; connecting to %s:%s", lost.host, lost.port,
                    self.node.host, self.node.port)


async def connect_robust(address: str, *, timeout: float | None = None) -> AbstractRobustConnection:
    """A self-reconnecting aio-pika connection to the first node of ``address`` that answers."""
    nodes = parse_broker_address(address)
    last: BaseException | None = None
    for index, node in enumerate(nodes):
        connection = FailoverConnection(nodes, index)
        try:
            await connection.connect(timeout=timeout)
            return connection
        except Exception as exc:  # aiormq's errors (refused, TLS, login) name no common base; the last is raised
            await connection.close()
            last = exc
            _log_refused(node, exc, more=index + 1 < len(nodes))
    assert last is not None
    raise last


async def connect(address: str, *, timeout: float | None = None) -> AbstractConnection:
    """A plain aio-pika connection (for short jobs: declare, read a stream) to the first node that answers."""
    nodes = parse_broker_address(address)
    last: BaseException | None = None
    for index, node in enumerate(nodes):
        connection = Connection(URL(node.url), ssl_context=_context(node))
        try:
            await connection.connect(timeout=timeout)
            return connection
        except Exception as exc:  # aiormq's errors name no common base; the last one is raised
            await connection.close()
            last = exc
            _log_refused(node, exc, more=index + 1 < len(nodes))
    assert last is not None
    raise last


def pika_parameters(address: str) -> list[pika.ConnectionParameters]:
    """pika's parameters for each node of ``address``, in order, TLS where the URL is amqps://."""
    out: list[pika.ConnectionParameters] = []
    for node in parse_broker_address(address):
        params = pika.URLParameters(node.url)
        if node.tls:
            params.ssl_options = pika.SSLOptions(tls_context(node), server_hostname=node.host)
        out.append(params)
    return out


def connect_blocking(address: str) -> pika.BlockingConnection:
    """A pika blocking connection to the first node of ``address`` that answers (pika tries them in order)."""
    return pika.BlockingConnection(pika_parameters(address))


def _log_refused(node: BrokerUrl, exc: BaseException, *, more: bool) -> None:
    log.warning("broker node %s refused or unreachable (%r)%s", redact(node.url), exc,
                "; trying the next" if more else "")




@contextmanager
def confirmed_channel(address: str) -> Iterator[Any]:
    """A pika channel with publisher confirms on its own connection, closed after (CLI queue tools).

    Closing the connection returns every delivery not acked on it to its queue, in order, so a tool
    that stops half-way loses nothing.
    """
    connection = connect_blocking(address)
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        yield channel
    finally:
        if connection.is_open:
            connection.close()


def queues_with_consumers(address: str, names: Iterable[str]) -> set[str]:
    """Which of the queues ``names`` exist and have a consumer now (a readiness probe: the demo waits on it)."""
    ready: set[str] = set()
    connection = connect_blocking(address)
    try:
        for name in names:
            channel = connection.channel()
            try:
                if channel.queue_declare(name, passive=True).method.consumer_count > 0:
                    ready.add(name)
            except pika.exceptions.ChannelClosedByBroker:
                pass  # not declared yet; the broker closed this channel, the next one is new
    finally:
        if connection.is_open:
            connection.close()
    return ready


__all__ = ["FailoverConnection", "confirmed_channel", "connect", "connect_blocking", "connect_robust",
           "pika_parameters", "queues_with_consumers", "tls_context"]
