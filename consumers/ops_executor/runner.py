"""Reaching a game-server host: run an argument list there, or deliver files into a directory there.

Two runners share one protocol: :class:`LocalRunner` (subprocesses on this machine, where an
"IP" is only a placeholder in directory templates: the default, used by tests, the demo and
single-host setups) and :class:`~consumers.ops_executor.ssh_runner.SshRunner` (one asyncssh
connection per game host, shared by everything an update does there). An update acts on a host
through a :class:`HostSession` (:meth:`HostRunner.session`), held while its servers there run,
so a runner can keep a connection and a per-update staging directory for that long. Every command has a timeout;
on timeout or cancellation the whole process group is killed, so no child outlives its step,
and the local copy of files stops (between chunks) before the timeout is reported: what is
reported as stopped has stopped.

The Erlang cookie never travels on a command line. The local runner runs Erlang commands with
``HOME`` set to a private directory holding the project's cookie (:mod:`domain.erlang_cookie`);
over ssh the game host's own ``~/.erlang.cookie`` (of ``ssh_user``) applies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

log = logging.getLogger(__name__)

OUTPUT_LIMIT = 4000  # characters of stdout/stderr kept per command: results travel in events
# A command cut off mid-way (a crash, a dropped connection): it may have run, so it is never re-run by itself.
INTERRUPTED_UNKNOWN = "执行中断, 结果未知, 未重新执行"


@dataclass(frozen=True)
class StagedFile:
    """A verified file on the ops manager and the relative name it takes on the target."""

    source: Path
    name: str


@dataclass(frozen=True)
class CommandResult:
    """What one command did: exit status, (truncated) output, or why it did not finish."""

    ok: bool
    returncode: int | None = None
    stdout: str = ""
    stderr: str = ""
    error: str = ""

    def describe(self) -> str:
        """One line for an event's ``data``: the error, else the output."""
        if self.error:
            return self.error
        if not self.ok:
            detail = (self.stderr or self.stdout).strip()
            return f"exit {self.returncode}: {detail}" if detail else f"exit {self.returncode}"
        return self.stdout.strip()


def _clip(data: bytes) -> str:
    text = data.decode("utf-8", errors="replace")
    return text if len(text) <= OUTPUT_LIMIT else text[:OUTPUT_LIMIT] + "…"


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    # The child leads its own session (start_new_session), so its group id is its pid.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


async def run_argv(argv: Sequence[str], *, stdin: bytes | None = None, timeout: float,
                   env: Mapping[str, str] | None = None) -> CommandResult:
    """Run ``argv`` on this machine with a timeout; kill its process group on timeout or cancellation.

    ``env``: variables set for the command on top of this process's environment.
    """
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
            env={**os.environ, **env} if env else None,
        )
    except OSError as exc:
        return CommandResult(ok=False, error=f"cannot run {argv[0]}: {exc.strerror or exc}")
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
    except TimeoutError:
        _kill_group(proc)
        await proc.wait()
        log.warning("command %s timed out after %ss; process group killed", argv[0], timeout)
        return CommandResult(ok=False, error=f"timeout after {timeout:g}s")
    except asyncio.CancelledError:
        _kill_group(proc)
        await asyncio.shield(proc.wait())
        raise
    return CommandResult(ok=proc.returncode == 0, returncode=proc.returncode, stdout=_clip(out), stderr=_clip(err))


class HostSession(Protocol):
    """One update's hold on one host: commands and file deliveries there."""

    async def run(self, argv: Sequence[str], *, stdin: bytes | None = None, timeout: float,
                  home: Path | None = None) -> CommandResult:
        """Run ``argv`` on the host (arguments stay separate: no shell splits or expands them).

        ``home``: a directory holding ``.erlang.cookie``, the ``HOME`` of a local Erlang command.
        """
        ...

    async def put_files(self, files: Sequence[StagedFile], dest_dir: str, *, timeout: float) -> CommandResult:
        """Deliver ``files`` below the existing directory ``dest_dir``, each replaced atomically."""
        ...


class HostRunner(Protocol):
    """How the ops manager acts on a game-server host."""

    kind: str

    def session(self, ip: str, update_id: str) -> contextlib.AbstractAsyncContextManager[HostSession]:
        """Hold host ``ip`` for update ``update_id``; what it set up there is undone on leaving."""
        ...


class LocalRunner:
    """Runs on this machine; the IP only selects directories through the templates."""

    kind = "local"

    @asynccontextmanager
    async def session(self, ip: str, update_id: str) -> AsyncIterator[HostSession]:
        yield _LocalSession()

    async def run(
        self, ip: str, argv: Sequence[str], *, stdin: bytes | None = None, timeout: float, home: Path | None = None
    ) -> CommandResult:
        """Run ``argv`` here (``ip`` is not used)."""
        return await _LocalSession().run(argv, stdin=stdin, timeout=timeout, home=home)

    async def put_files(
        self, ip: str, files: Sequence[StagedFile], dest_dir: str, *, timeout: float
    ) -> CommandResult:
        """Copy ``files`` into ``dest_dir`` here (``ip`` is not used)."""
        return await _LocalSession().put_files(files, dest_dir, timeout=timeout)


class _LocalSession:
    async def run(self, argv: Sequence[str], *, stdin: bytes | None = None, timeout: float,
                  home: Path | None = None) -> CommandResult:
        return await run_argv(argv, stdin=stdin, timeout=timeout, env={"HOME": str(home)} if home else None)

    async def put_files(self, files: Sequence[StagedFile], dest_dir: str, *, timeout: float) -> CommandResult:
        stop = threading.Event()
        copy = asyncio.ensure_future(asyncio.to_thread(copy_into, files, Path(dest_dir), stop))
        try:
            await asyncio.wait_for(asyncio.shield(copy), timeout)
        except TimeoutError:
            # The thread cannot be killed: tell it to stop and wait until it has (it removes its
            # partial file), so nothing lands after the timeout is reported.
            await _stopped(copy, stop)
            log.warning("copy into %s timed out after %ss; stopped", dest_dir, timeout)
            return CommandResult(ok=False, error=f"timeout after {timeout:g}s")
        except asyncio.CancelledError:
            await _stopped(copy, stop)
            raise
        except OSError as exc:
            return CommandResult(ok=False, error=f"{exc.strerror or exc}: {exc.filename or dest_dir}")
        return CommandResult(ok=True, returncode=0, stdout=f"{len(files)} file(s) copied")


async def _stopped(copy: asyncio.Future[None], stop: threading.Event) -> None:
    stop.set()
    with contextlib.suppress(CopyStopped, OSError):
        await asyncio.shield(copy)


class CopyStopped(Exception):
    """The copy was told to stop; files already replaced stay, the one in progress was removed."""


def copy_into(files: Sequence[StagedFile], dest_dir: Path, stop: threading.Event | None = None) -> None:
    """Copy each file to ``dest_dir/<name>``, replacing atomically so a loader never sees half a file.

    ``stop`` set: the copy ends before the next file or chunk (:class:`CopyStopped`).
    """
    if not dest_dir.is_dir():
        # A server's code directory must already exist: creating it would hide a wrong server_root.
        raise NotADirectoryError(20, "not a directory", str(dest_dir))
    for item in files:
        if stop is not None and stop.is_set():
            raise CopyStopped()
        target = dest_dir / item.name
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f".{target.name}.hotupdate-tmp"
        try:
            with item.source.open("rb") as src, tmp.open("wb") as dst:
                while chunk := src.read(1024 * 1024):
                    if stop is not None and stop.is_set():
                        raise CopyStopped()
                    dst.write(chunk)
                dst.flush()
                os.fsync(dst.fileno())
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
