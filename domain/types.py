"""Validated value types shared by every boundary (events, HTTP, configuration).

Values that later become file paths, process arguments or routing-key words are
checked here once, so nothing downstream has to trust an event's content.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from pathlib import PurePosixPath
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, StringConstraints, WithJsonSchema

ProjectKey = Annotated[str, StringConstraints(pattern=r"^[a-z0-9_]+$", min_length=1, max_length=64)]
"""A project's English key from the CMDB (``ssss``); also a routing-key word."""

AreaCode = Annotated[str, StringConstraints(pattern=r"^[a-z0-9_]+$", min_length=1, max_length=64)]
"""An area's code (``cn``, ``cn_new``); also a routing-key word."""

Version = Annotated[str, StringConstraints(pattern=r"^[0-9]+$", min_length=1, max_length=32)]
"""A version number as the version receiver names its directories (``004200000``)."""

Md5Hex = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]

UpdateType = Literal["hot_client", "hot_server"]
ServerGroup = Literal["game", "cross", "cross_center"]
SERVER_GROUPS: tuple[ServerGroup, ...] = ("game", "cross", "cross_center")

# Erlang short node names and CDN directory names become path components and
# process arguments; a conservative alphabet keeps shell and path tricks out.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")

# The checks below are pure functions of the text, and the same names and addresses come in event
# after event (an update's servers, its IPs): their results are cached. A bounded cache; an invalid
# value raises every time (exceptions are not cached).
_CHECKED = 4096


@functools.lru_cache(maxsize=_CHECKED)
def _check_name(value: str) -> str:
    if not _NAME_RE.fullmatch(value) or ".." in value:
        raise ValueError(
            f"{value!r} is not a valid name: letters, digits, '_', '.', '-' only, starting with a letter or digit"
        )
    return value


_NAME_SCHEMA = WithJsonSchema({"type": "string", "pattern": r"^(?!.*\.\.)[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$",
                               "description": "letters, digits, '_', '.', '-'; no '..'"})
ServerName = Annotated[str, AfterValidator(_check_name), _NAME_SCHEMA]
"""A game server's name (``qq_1``): also its Erlang node's short name."""

CdnDir = Annotated[str, AfterValidator(_check_name), _NAME_SCHEMA]


_HOST_PATTERN = r"^[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*$"


@functools.lru_cache(maxsize=_CHECKED)
def _check_host(value: str) -> str:
    if not re.fullmatch(_HOST_PATTERN, value):
        raise ValueError(f"{value!r} is not a valid host name")
    return value.lower()


HostName = Annotated[
    str, AfterValidator(_check_host), WithJsonSchema({"type": "string", "format": "hostname", "pattern": _HOST_PATTERN})
]
"""A DNS host name such as a CDN root (``res.ssss.chuangyunet.com``)."""


@functools.lru_cache(maxsize=_CHECKED)
def _check_ip(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address") from None


IpAddress = Annotated[
    str,
    AfterValidator(_check_ip),
    WithJsonSchema({"type": "string", "anyOf": [{"format": "ipv4"}, {"format": "ipv6"}]}),
]
"""An IPv4 or IPv6 address, normalised to its canonical text."""


def check_relative_path(value: str) -> str:
    """Accept a relative POSIX path that stays below its root: no '..', not absolute, no NUL."""
    if not value or "\x00" in value or "\\" in value:
        raise ValueError(f"{value!r} is not a valid relative file name")
    path = PurePosixPath(value)
    if path.is_absolute() or any(part in ("..", "") for part in value.split("/")):
        raise ValueError(f"{value!r} must be a relative path without '..' or empty parts")
    if any(part == "." for part in path.parts) or value.startswith("./"):
        raise ValueError(f"{value!r} must not contain '.' parts")
    return value


_check_file_name = functools.lru_cache(maxsize=_CHECKED)(check_relative_path)  # an update's files, event after event


def _check_relative_path_cached(value: str) -> str:
    # Cached like the names above, but only short ones: a file name may be up to 1024 characters.
    return _check_file_name(value) if len(value) <= 256 else check_relative_path(value)


RelativeFileName = Annotated[
    str,
    Field(max_length=1024),
    AfterValidator(_check_relative_path_cached),
    WithJsonSchema(
        {
            "type": "string",
            "maxLength": 1024,
            # [\s\S] rather than '.', which stops at a newline; no trailing '/' (an empty last part)
            "pattern": r"^(?!/)(?![\s\S]*(^|/)\.{1,2}(/|$))(?![\s\S]*//)(?![\s\S]*/$)[^\\\u0000]+$",
            "description": "relative to reloadfiles: no leading '/', no '.' or '..' parts, no '\\'",
        }
    ),
]
"""A file name relative to an update's ``reloadfiles`` directory."""

Operator = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.@-]{1,64}$")]
"""Who asked for something: an operator's login or a tool's name."""
