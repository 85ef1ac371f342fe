"""Reaching game hosts over SSH (asyncssh): one connection per host, shared by all an update does there.

Why not the ``ssh`` binary: a new ``ssh`` process per command costs a key exchange, a login and
a new sshd session on the game host every time (17 commands/s at 76 ms of client CPU each,
measured, BENCHMARKS.md); one asyncssh connection per host runs every command as a channel of it.

- **Connections.** A host's connection is opened by the first command an update runs there and
  closed when the last :meth:`SshRunner.session` on that host ends. At most
  ``ssh_channels_per_host`` commands run over it at once; how many hosts are worked on at once
  is the executor's per-IP concurrency. Host keys are checked against ``ssh_known_hosts`` (never
  trusted on first use), login is by key only, as ``ssh_user`` on ``ssh_port``.
- **Files travel once per IP.** The first delivery of an update to a host uploads its files as
  one tar stream into a staging directory of that update (``~/.hotupdate-staging/<update>@<ip>``); each
  server then gets them from there by a small ``sh`` script: copied beside the target, fsync'ed,
  renamed over it, so an ``ebin`` never holds half a ``.beam`` even if the connection is cut. The
  staging directory is removed when the update's last session on the host ends.
- **Failures are per host and named**: an unreachable host, a refused key, an unknown host key
  fail every command of that host at once with the same reason (no second login attempt per
  server). A connection lost *between* commands is re-opened for the next one (at most
  :data:`MAX_RECONNECTS` times); a command it was running has an unknown outcome and is reported
  as such (:data:`INTERRUPTED_UNKNOWN`), never re-run.
- A command past its timeout is killed on the host: every command runs under the host's
  ``timeout -s KILL`` (GNU coreutils: the command's whole process group), since sshd refuses SSH
  ``signal`` requests for root logins ("session signalling requires privilege separation") and
  closing a channel does not stop a command that reads and writes nothing. The runner waits
  briefly for the channel's end, so a timeout is reported once the command has stopped.

The Erlang cookie never travels: ``erl_call`` on the game host reads ``~/.erlang.cookie`` of the
ssh user (``home`` of :meth:`_SshSession.run` is the local runner's and is not used here).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import logging
import os
import re
import shlex
import tarfile
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh

from consumers.ops_executor.runner import INTERRUPTED_UNKNOWN, OUTPUT_LIMIT, CommandResult, HostSession, StagedFile
from domain.config import ConfigError, RunnerConfig

log = logging.getLogger(__name__)

STAGING_ROOT = ".hotupdate-staging"  # below the ssh user's home: <root>/<update id>@<ip>
MAX_RECONNECTS = 3  # per host and update: a host that keeps dropping the connection is failed
CLEANUP_TIMEOUT = 30.0
KILL_GRACE = 5.0  # seconds to wait, after a timeout, for the host's ``timeout`` to have killed the command

# Scripts run by ``sh -c`` on the game host: fixed text; what varies comes as positional arguments.
# Each starts in $HOME: the staging directory is relative to it, wherever the login shell starts.
STAGE_SCRIPT = ('cd && rm -rf -- "$1" && mkdir -p -- "${1%/*}" && mkdir -m 700 -- "$1" '
          '&& exec tar -x --no-same-owner -f - -C "$1"')
INSTALL_SCRIPT = """cd || exit 1
stage=$1 dest=$2
shift 2
[ -d "$dest" ] || { echo "$dest: not a directory" >&2; exit 20; }
for name do
  target=$dest/$name
  dir=$(dirname -- "$target") && tmp=$dir/.$(basename -- "$target").hotupdate-tmp || exit 1
  mkdir -p -- "$dir" && cp -- "$stage/$name" "$tmp" && sync -- "$tmp" && mv -f -- "$tmp" "$target" \\
    || { rm -f -- "$tmp"; exit 1; }
done
"""
CLEAN_SCRIPT = 'cd && rm -rf -- "$1"'
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}")  # no "/", no leading "."


class HostFailed(Exception):
    """The host cannot be reached, or refused us: every command of the host fails with this reason."""


@dataclass
class _Staging:
    directory: str
    users: int = 0
    done: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class SshRunner:
    """Runs commands and delivers files on game hosts over one asyncssh connection per host."""

    kind = "ssh"

    def __init__(self, config: RunnerConfig) -> None:
        """Reads the client key and the known_hosts file now: a missing or unreadable one stops the start."""
        self._config = config
        try:
            self._keys = [asyncssh.read_private_key(config.ssh_key)] if config.ssh_key is not None else None
            self._known_hosts = (asyncssh.read_known_hosts(str(config.ssh_known_hosts))
                                 if config.ssh_known_hosts is not None else None)
        except (OSError, asyncssh.KeyImportError, ValueError) as exc:
            raise ConfigError(f"runner: ssh_key/ssh_known_hosts: {getattr(exc, 'strerror', None) or exc}") from None
        self._hosts: dict[str, _Host] = {}
        self.connections_opened: Counter[str] = Counter()  # per IP: how many logins (goal: 1 per update)

    @asynccontextmanager
    async def session(self, ip: str, update_id: str) -> AsyncIterator[HostSession]:
        """Hold ``ip`` for ``update_id``: its connection and staging directory live as long as a holder does."""
        host = self._hosts.get(ip)
        if host is None:
            host = self._hosts[ip] = _Host(ip, self._config, self.options(), self.connections_opened)
        host.users += 1
        staging = host.staging.get(update_id)
        if staging is None:
            # Named for the host too: hosts that share a home (NFS, or tests on loopback) must not share it.
            staging = host.staging[update_id] = _Staging(staging_dir(update_id, ip))
        staging.users += 1
        try:
            yield _SshSession(host, staging)
        finally:
            await asyncio.shield(self._leave(host, update_id, staging))

    async def _leave(self, host: _Host, update_id: str, staging: _Staging) -> None:
        staging.users -= 1
        if staging.users == 0:
            del host.staging[update_id]
            if staging.done:
                removed = await host.execute(clean_line(staging.directory), None, CLEANUP_TIMEOUT)
                if not removed.ok:
                    log.warning("ssh %s: staging directory %s not removed: %s", host.ip, staging.directory,
                                removed.describe())
        host.users -= 1
        if host.users == 0:
            del self._hosts[host.ip]
            await host.close()

    def options(self) -> asyncssh.SSHClientConnectionOptions:
        """How every connection is made: user, port, pinned host keys, the key, no agent, no ~/.ssh/config."""
        config = self._config
        return asyncssh.SSHClientConnectionOptions(
            username=config.ssh_user,
            port=config.ssh_port,
            known_hosts=self._known_hosts if self._known_hosts is not None else (),
            client_keys=self._keys if self._keys is not None else (),
            agent_path=None if self._keys is not None else (),
            preferred_auth="publickey",
            config=[],  # no ~/.ssh/config: what reaches a game host is this configuration alone
            connect_timeout=config.ssh_connect_timeout_seconds,
            login_timeout=config.ssh_connect_timeout_seconds,
            keepalive_interval=15,
            keepalive_count_max=3,
        )


class _SshSession:
    """One update's hold on one host (see :meth:`SshRunner.session`)."""

    def __init__(self, host: _Host, staging: _Staging) -> None:
        self._host = host
        self._staging = staging

    async def run(self, argv: Sequence[str], *, stdin: bytes | None = None, timeout: float,
                  home: Path | None = None) -> CommandResult:
        # The login shell splits the line back into exactly ``argv``: each piece is quoted.
        return await self._host.execute(shlex.join(argv), stdin, timeout)

    async def put_files(self, files: Sequence[StagedFile], dest_dir: str, *, timeout: float) -> CommandResult:
        staged = await self._stage(files, timeout)
        if staged is not None:
            return staged
        names = [item.name for item in files]
        result = await self._host.execute(
            install_line(self._staging.directory, dest_dir, names), None, timeout)
        return result if not result.ok else CommandResult(ok=True, returncode=0, stdout=f"{len(files)} file(s) copied")

    async def _stage(self, files: Sequence[StagedFile], timeout: float) -> CommandResult | None:
        """Upload the update's files to the host once; None once they are there, else why not."""
        async with self._staging.lock:
            if self._staging.done:
                return None
            try:
                archive = await asyncio.to_thread(tar_of, files)
            except OSError as exc:
                return CommandResult(ok=False, error=f"{exc.strerror or exc}: {exc.filename}")
            # A cut upload leaves nothing in an ebin: the next delivery uploads again from scratch.
            result = await self._host.execute(stage_line(self._staging.directory), archive, timeout)
            if not result.ok:
                return CommandResult(ok=False, error=f"upload to {self._host.ip}: {result.describe()}")
            self._staging.done = True
            return None


class _Host:
    """One game host: its connection (opened on demand, re-opened after a loss) and its channel bound."""

    def __init__(self, ip: str, config: RunnerConfig, options: asyncssh.SSHClientConnectionOptions,
                 opened: Counter[str]) -> None:
        self.ip = ip
        self.users = 0
        self.staging: dict[str, _Staging] = {}
        self._config = config
        self._options = options
        self._opened = opened
        self._connection: asyncssh.SSHClientConnection | None = None
        self._failed: str | None = None
        self._losses = 0
        self._lock = asyncio.Lock()
        self._channels = asyncio.Semaphore(config.ssh_channels_per_host)

    async def execute(self, command: str, stdin: bytes | None, timeout: float) -> CommandResult:
        """Run ``command`` (a line for the login shell) on the host; every failure is a result."""
        command = timed(command, timeout)
        async with self._channels:
            try:
                async with asyncio.timeout(timeout):
                    process = await self._open(command)
            except HostFailed as exc:
                return CommandResult(ok=False, error=str(exc))
            except TimeoutError:
                return CommandResult(ok=False, error=f"timeout after {timeout:g}s (ssh {self.ip}: no channel)")
            return await self._finish(process, stdin, timeout)

    async def _open(self, command: str) -> asyncssh.SSHClientProcess[bytes]:
        """A channel running ``command``: over the connection, re-opened if it was lost before it started."""
        while True:
            connection = await self._connect()
            try:
                return await connection.create_process(command, encoding=None)
            except (asyncssh.ChannelOpenError, asyncssh.DisconnectError, ConnectionError) as exc:
                if not connection.is_closed():
                    raise HostFailed(f"ssh {self.ip}: cannot open a channel: {_reason(exc)}") from None
                # Lost before this command started: nothing ran, so it may go on a new connection.
                log.warning("ssh %s: connection lost before a command started; re-opening", self.ip)

    async def _finish(self, process: asyncssh.SSHClientProcess[bytes], stdin: bytes | None,
                      timeout: float) -> CommandResult:
        try:
            with contextlib.suppress(BrokenPipeError, ConnectionError):
                # Refused when the command already ended without reading it (or the connection went):
                # its exit status, or its absence, tells which.
                if stdin:
                    process.stdin.write(stdin)
                process.stdin.write_eof()
            done = await process.wait(timeout=timeout)
        except asyncssh.TimeoutError:
            with contextlib.suppress(Exception):
                process.kill()  # honoured for logins other than root; the host's ``timeout`` does the rest
            with contextlib.suppress(Exception):
                await asyncio.wait_for(process.wait_closed(), KILL_GRACE)
            process.close()
            log.warning("ssh %s: command timed out after %ss; killed", self.ip, timeout)
            return CommandResult(ok=False, error=f"timeout after {timeout:g}s")
        except (asyncssh.DisconnectError, asyncssh.ChannelOpenError, ConnectionError, BrokenPipeError) as exc:
            return self._lost(exc)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                process.kill()
            process.close()
            raise
        if done.exit_status is None and done.exit_signal is None:
            return self._lost(None)  # the channel closed without an exit status: the connection went
        if done.exit_signal is not None:
            name = done.exit_signal[0]
            return CommandResult(ok=False, returncode=done.returncode, stdout=_clip(done.stdout),
                                 stderr=_clip(done.stderr), error=f"killed by signal {name}")
        return CommandResult(ok=done.exit_status == 0, returncode=done.exit_status, stdout=_clip(done.stdout),
                             stderr=_clip(done.stderr))

    def _lost(self, exc: BaseException | None) -> CommandResult:
        why = _reason(exc) if exc is not None else "channel closed without an exit status"
        log.warning("ssh %s: connection lost during a command (%s); its outcome is unknown", self.ip, why)
        return CommandResult(ok=False, error=f"{INTERRUPTED_UNKNOWN} (ssh {self.ip}: connection lost: {why})")

    async def _connect(self) -> asyncssh.SSHClientConnection:
        async with self._lock:
            if self._failed is not None:
                raise HostFailed(self._failed)
            if self._connection is not None and not self._connection.is_closed():
                return self._connection
            if self._connection is not None:
                self._losses += 1
                if self._losses > MAX_RECONNECTS:
                    self._failed = f"ssh {self.ip}: connection lost {self._losses} times; host given up"
                    raise HostFailed(self._failed)
            try:
                self._connection = await asyncssh.connect(self.ip, options=self._options)
            except Exception as exc:
                self._failed = self._refusal(exc)
                log.warning("%s", self._failed)
                raise HostFailed(self._failed) from None
            self._opened[self.ip] += 1
            return self._connection

    def _refusal(self, exc: BaseException) -> str:
        where = f"ssh {self._config.ssh_user}@{self.ip}:{self._config.ssh_port}"
        known = self._config.ssh_known_hosts or "~/.ssh/known_hosts"
        if isinstance(exc, asyncssh.HostKeyNotVerifiable):
            return f"{where}: Host key verification failed: unknown host key (not pinned in {known}); refused"
        if isinstance(exc, asyncssh.PermissionDenied):
            return f"{where}: Permission denied (publickey): the host refused the key {self._config.ssh_key or ''}"
        if isinstance(exc, TimeoutError):
            return f"{where}: unreachable: no SSH login within {self._config.ssh_connect_timeout_seconds:g}s"
        if isinstance(exc, OSError):
            return f"{where}: unreachable: {os.strerror(exc.errno) if exc.errno else exc}"
        if isinstance(exc, asyncssh.Error):
            return f"{where}: {_reason(exc)}"
        return f"{where}: {type(exc).__name__}: {exc}"

    async def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            with contextlib.suppress(Exception):
                await self._connection.wait_closed()


def _reason(exc: BaseException) -> str:
    return str(getattr(exc, "reason", "") or exc or type(exc).__name__)


def _clip(data: object) -> str:
    text = data.decode("utf-8", errors="replace") if isinstance(data, bytes) else str(data or "")
    return text if len(text) <= OUTPUT_LIMIT else text[:OUTPUT_LIMIT] + "…"


def _dir_name(update_id: str) -> str:
    """A staging directory name for ``update_id``: itself when harmless as a path part, else a digest."""
    if _SAFE_ID.fullmatch(update_id):
        return update_id
    return hashlib.sha256(update_id.encode("utf-8")).hexdigest()[:32]


def staging_dir(update_id: str, ip: str) -> str:
    """The staging directory of ``update_id`` on ``ip``, relative to the ssh user's home."""
    return f"{STAGING_ROOT}/{_dir_name(f'{update_id}@{ip}')}"


def stage_line(directory: str) -> str:
    """The command that unpacks a tar from stdin into a fresh ``directory``."""
    return shlex.join(["sh", "-c", STAGE_SCRIPT, "sh", directory])


def install_line(directory: str, dest_dir: str, names: Sequence[str]) -> str:
    """The command that puts the staged ``names`` in place below ``dest_dir``, each atomically."""
    return shlex.join(["sh", "-c", INSTALL_SCRIPT, "sh", directory, dest_dir, *names])


def clean_line(directory: str) -> str:
    """The command that removes a staging directory."""
    return shlex.join(["sh", "-c", CLEAN_SCRIPT, "sh", directory])


def timed(command: str, timeout: float) -> str:
    """``command`` under the host's ``timeout -s KILL``: killed there, process group and all, when it overruns."""
    return f"timeout -s KILL {timeout:.3f} {command}"


def tar_of(files: Sequence[StagedFile]) -> bytes:
    """An uncompressed tar of ``files`` under their relative names (hot-update files are small)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for item in files:
            info = tar.gettarinfo(str(item.source), arcname=item.name)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            with item.source.open("rb") as src:
                tar.addfile(info, src)
    return buffer.getvalue()
