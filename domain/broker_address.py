"""A broker address: one AMQP URL or several (failover), each ``amqps://`` one with its TLS files.

This is the text every component is given (``amqp_url`` in the configuration, ``HOTUPDATE_AMQP_URL``,
``--amqp-url``). Two ways to name several nodes are read, and both mean the same list:

- full URLs separated by commas: ``amqps://u:p@mq1:5671/prod,amqps://u:p@mq2:5671/prod``
  (a comma inside a password is written ``%2C``);
- one URL with a host list: ``amqps://u:p@mq1,mq2:5671,mq3/prod``: the scheme, user, password,
  virtual host and query apply to each host.

TLS files travel in the query under RabbitMQ's own URI parameter names (``cacertfile``, ``certfile``,
``keyfile``); ``domain.config`` writes the ``broker.tls`` block into them, and ``bus.connection`` turns
them into one verifying ``ssl.SSLContext`` for both client libraries. Nothing here opens a connection.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

TLS_QUERY_KEYS = ("cacertfile", "certfile", "keyfile")
_SCHEMES = {"amqp": 5672, "amqps": 5671}
_URL = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?:(?P<userinfo>[^@/?#]*)@)?(?P<hosts>[^/?#]*)(?P<rest>.*)$")
_NEXT_URL = re.compile(r",\s*(?=[A-Za-z][A-Za-z0-9+.-]*://)")


class BrokerAddressError(ValueError):
    """The broker address cannot be read; the message says which part and why (never the password)."""


@dataclass(frozen=True)
class BrokerUrl:
    """One node of a broker address."""

    url: str  # the URL without the TLS query parameters, as both client libraries take it
    host: str
    port: int
    tls: bool
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None


def split_broker_urls(address: str) -> list[str]:
    """Each node's full URL, in the order given (host lists expanded); TLS query parameters kept."""
    text = address.strip()
    if not text:
        raise BrokerAddressError("the broker address is empty")
    urls: list[str] = []
    for piece in _NEXT_URL.split(text):
        match = _URL.match(piece.strip())
        if match is None:
            raise BrokerAddressError(f"not an AMQP URL: {redact(piece)!r} (expected amqp://… or amqps://…)")
        scheme, userinfo, hosts, rest = match.group("scheme", "userinfo", "hosts", "rest")
        if scheme.lower() not in _SCHEMES:
            raise BrokerAddressError(f"unsupported scheme {scheme!r} (amqp or amqps)")
        credentials = f"{userinfo}@" if userinfo is not None else ""
        for host in hosts.split(","):
            if not host.strip():
                raise BrokerAddressError(f"a broker URL has an empty host: {redact(piece)!r}")
            urls.append(f"{scheme.lower()}://{credentials}{host.strip()}{rest}")
    return urls


def parse_broker_address(address: str) -> list[BrokerUrl]:
    """The nodes of ``address``, validated; TLS files only on ``amqps://`` URLs."""
    nodes: list[BrokerUrl] = []
    for url in split_broker_urls(address):
        parts = urlsplit(url)
        if parts.fragment:
            raise BrokerAddressError(f"a broker URL has a fragment: {redact(url)!r}")
        try:
            port = parts.port
        except ValueError:
            raise BrokerAddressError(f"a broker URL has a bad port: {redact(url)!r}") from None
        tls = parts.scheme == "amqps"
        query = parse_qsl(parts.query, keep_blank_values=True)
        files = {k: v for k, v in query if k in TLS_QUERY_KEYS}
        if files and not tls:
            raise BrokerAddressError(f"TLS files are given for a plain amqp:// URL: {redact(url)!r}")
        if ("certfile" in files) != ("keyfile" in files):
            raise BrokerAddressError(f"a client certificate needs both certfile and keyfile: {redact(url)!r}")
        rest = urlencode([(k, v) for k, v in query if k not in TLS_QUERY_KEYS])
        nodes.append(
            BrokerUrl(
                url=urlunsplit((parts.scheme, parts.netloc, parts.path, rest, "")),
                host=parts.hostname or "",
                port=port or _SCHEMES[parts.scheme],
                tls=tls,
                ca_file=files.get("cacertfile") or None,
                cert_file=files.get("certfile") or None,
                key_file=files.get("keyfile") or None,
            )
        )
    return nodes


def with_tls_files(address: str, *, ca_file: str | None, cert_file: str | None, key_file: str | None) -> str:
    """``address`` with these TLS files on every node (replacing any given); every node must be amqps://."""
    given = {"cacertfile": ca_file, "certfile": cert_file, "keyfile": key_file}
    if not any(given.values()):
        return address
    out: list[str] = []
    for url in split_broker_urls(address):
        parts = urlsplit(url)
        if parts.scheme != "amqps":
            raise BrokerAddressError(f"broker TLS files are configured but {redact(url)!r} is not amqps://")
        query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in given]
        query += [(k, v) for k, v in given.items() if v]
        out.append(urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), parts.fragment)))
    parse_broker_address(",".join(out))  # the result must read back (e.g. a certificate without its key)
    return ",".join(out)


def redact(address: str) -> str:
    """The address without passwords or query, for logs and messages."""
    shown: list[str] = []
    for piece in _NEXT_URL.split(address.strip()):
        match = _URL.match(piece.strip())
        if match is None:
            shown.append("<unreadable URL>")
            continue
        userinfo = match.group("userinfo")
        user = f"{userinfo.split(':', 1)[0]}:***@" if userinfo else ""
        path = urlsplit(match.group("rest")).path
        shown.append(f"{match.group('scheme')}://{user}{match.group('hosts')}{path}")
    return ",".join(shown)
