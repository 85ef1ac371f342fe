"""Running the real ``rsync`` client against one rsync daemon module, and reading its result.

The files to send are named explicitly (``--files-from`` on stdin, NUL-separated, which
implies ``--relative``), so rsync reads nothing in the source directory but them and
recreates their directories under the module. Arguments are a list, never a shell string.
"""

from __future__ import annotations

import logging
import math
import os
import re
import stat
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

ERROR_LIMIT = 2000  # characters of rsync's stderr kept in an event
_BYTES_SENT = re.compile(r"^Total bytes sent:\s*([0-9][0-9,.']*)", re.MULTILINE)


@dataclass(frozen=True)
class DaemonModule:
    """Where to push: an rsync daemon's module, the user to log in as and its password file."""

    ip: str
    port: int
    module: str
    user: str
    password_file: Path

    def url(self, remote_dir: str = "") -> str:
        """``rsync://user@ip:port/module/<remote_dir>/``."""
        host = f"[{self.ip}]" if ":" in self.ip else self.ip
        tail = f"{remote_dir.strip('/')}/" if remote_dir.strip("/") else ""
        return f"rsync://{self.user}@{host}:{self.port}/{self.module}/{tail}"


@dataclass(frozen=True)
class RsyncResult:
    """One push: did it work, bytes sent over the wire (rsync's ``Total bytes sent``), time, error text."""

    ok: bool
    bytes: int = 0
    seconds: float = 0.0
    error: str = ""


class PasswordFileError(Exception):
    """The password file is missing, not a file, or readable by others than its owner."""


def check_password_file(path: Path) -> None:
    """Refuse a password file that does not exist or is not mode 600 (the seed's warning)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise PasswordFileError(f"password file {path} does not exist") from None
    except OSError as exc:
        raise PasswordFileError(f"password file {path} cannot be checked: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise PasswordFileError(f"password file {path} is not a regular file")
    mode = stat.S_IMODE(st.st_mode)
    # Exactly 600, as the seed and `hotupdate config check` demand; rsync itself only refuses other-readable.
    if mode != 0o600:
        raise PasswordFileError(
            f"password file {path} has mode {mode:03o}; it must be 600 (chmod 600 {path})"
        )


def rsync_command(
    target: DaemonModule, source_root: Path, *, io_timeout_seconds: float, remote_dir: str = "", rsync: str = "rsync"
) -> list[str]:
    """The argument list pushing the files named on stdin from ``source_root`` to ``target``."""
    io_timeout = str(max(1, math.ceil(io_timeout_seconds)))
    return [
        rsync,
        "--checksum",  # decide by content, not size+mtime: a redelivered push sends nothing again
        "--times",
        "--delay-updates",  # the ops manager sees the new files together, at the end
        "--from0",
        "--files-from=-",
        "--stats",
        "--no-motd",
        f"--timeout={io_timeout}",
        f"--contimeout={io_timeout}",
        f"--password-file={target.password_file}",
        f"{source_root}/",
        target.url(remote_dir),
    ]


def push_files(
    target: DaemonModule,
    source_root: Path,
    names: Sequence[str],
    *,
    timeout_seconds: float,
    remote_dir: str = "",
    rsync: str = "rsync",
) -> RsyncResult:
    """Push ``names`` (relative to ``source_root``) to ``target``; blocking, so run it in a thread.

    ``timeout_seconds`` bounds the whole run (the process is killed past it) and each
    stall (rsync's own ``--timeout``).
    """
    try:
        check_password_file(target.password_file)
    except PasswordFileError as exc:
        return RsyncResult(ok=False, error=str(exc))
    cmd = rsync_command(
        target, source_root, io_timeout_seconds=timeout_seconds, remote_dir=remote_dir, rsync=rsync
    )
    files_from = b"".join(os.fsencode(name) + b"\0" for name in names)
    started = time.monotonic()
    try:
        done = subprocess.run(
            cmd, input=files_from, capture_output=True, timeout=timeout_seconds, env=_child_env(), check=False
        )
    except subprocess.TimeoutExpired:
        seconds = time.monotonic() - started
        return RsyncResult(ok=False, seconds=seconds, error=f"rsync to {target.url(remote_dir)} timed out after "
                           f"{timeout_seconds:g}s and was stopped")
    except OSError as exc:
        return RsyncResult(ok=False, error=f"cannot run {rsync}: {exc.strerror or exc}")
    seconds = time.monotonic() - started
    stdout = done.stdout.decode("utf-8", "replace")
    stderr = done.stderr.decode("utf-8", "replace").strip()
    if done.returncode != 0:
        log.warning("rsync to %s failed (exit %d): %s", target.url(remote_dir), done.returncode, stderr)
        text = _tail(stderr) or "(no message)"
        return RsyncResult(ok=False, seconds=seconds, error=f"{text} [rsync exit code {done.returncode}]")
    return RsyncResult(ok=True, bytes=parse_bytes_sent(stdout), seconds=seconds)


def parse_bytes_sent(stats: str) -> int:
    """``Total bytes sent: 1,234`` from ``--stats`` output (any digit grouping); 0 when absent."""
    match = _BYTES_SENT.search(stats)
    if match is None:
        return 0
    digits = re.sub(r"[^0-9]", "", match.group(1))
    return int(digits) if digits else 0


def _child_env() -> dict[str, str]:
    # RSYNC_PASSWORD, RSYNC_CONNECT_PROG, RSYNC_PROXY… in our environment must not redirect
    # the push or replace the configured password file; C locale keeps --stats parseable.
    env = {k: v for k, v in os.environ.items() if not k.startswith("RSYNC_")}
    env["LC_ALL"] = "C"
    return env


def _tail(text: str) -> str:
    return text if len(text) <= ERROR_LIMIT else "…" + text[-ERROR_LIMIT:]
