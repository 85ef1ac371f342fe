"""The Erlang cookie: read from its file, handed to Erlang programs through a private ``HOME``.

``erl`` and ``erl_call`` read ``$HOME/.erlang.cookie`` when no ``-setcookie``/``-c`` is given.
A cookie on a command line is visible to every user of the machine (``ps``, /proc/*/cmdline),
so hotupdate never puts it there: it copies the project's cookie file into a directory of its
own (mode 700, the copy mode 400) and runs the Erlang program with ``HOME`` pointing there.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
import tempfile
import weakref
from collections.abc import Mapping
from pathlib import Path

from domain.config import ConfigError

COOKIE_NAME = ".erlang.cookie"
# What erl accepts in a cookie file's first line without surprises: printable, no spaces.
_COOKIE = re.compile(r"[\x21-\x7e]{1,255}")
OWNER_ONLY_MODES = (0o600, 0o400)


class CookieError(ConfigError):
    """The cookie file is missing, unreadable, readable by others, or holds no valid cookie.

    A ConfigError, so a process that cannot start because of it says why and exits (``hotupdate consume``)."""


def read_cookie(path: Path) -> str:
    """The cookie in ``path``; refused unless only its owner may read it (mode 600 or 400)."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode not in OWNER_ONLY_MODES:
            raise CookieError(f"Erlang cookie file {path} has mode {mode:03o}; it must be 600 (chmod 600 {path})")
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise CookieError(f"Erlang cookie file {path}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    if not _COOKIE.fullmatch(text):
        raise CookieError(f"Erlang cookie file {path}: not a cookie (1-255 printable characters, no spaces)")
    return text


def make_home(cookie: str, parent: Path | None = None) -> Path:
    """A new directory (mode 700) holding ``.erlang.cookie`` (mode 400): a ``HOME`` for Erlang programs."""
    home = Path(tempfile.mkdtemp(prefix="hotupdate-erlang-", dir=parent))  # mkdtemp: mode 700
    fd = os.open(home / COOKIE_NAME, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
    with os.fdopen(fd, "w", encoding="ascii") as out:
        out.write(cookie)
    return home


def _remove(homes: list[Path]) -> None:
    for home in homes:
        with contextlib.suppress(OSError):
            (home / COOKIE_NAME).chmod(0o600)
        shutil.rmtree(home, ignore_errors=True)


class ErlangHomes:
    """One private ``HOME`` per project, made from its cookie file; removed by :meth:`close` (or at exit)."""

    def __init__(self, cookie_files: Mapping[str, Path]) -> None:
        cookies = {project: read_cookie(path) for project, path in cookie_files.items()}  # all checked first
        self._homes = {project: make_home(cookie) for project, cookie in cookies.items()}
        self._finalizer = weakref.finalize(self, _remove, list(self._homes.values()))

    def get(self, project: str) -> Path | None:
        """The ``HOME`` holding ``project``'s cookie, or None if it has no cookie file."""
        return self._homes.get(project)

    def close(self) -> None:
        """Remove every home (their cookie copies with them)."""
        self._finalizer()
