"""A span around each remote command and file delivery of a runner (bus/tracing.py; nothing when tracing is off).

A wrapper rather than an edit of each runner: whichever runner the configuration picks (local,
ssh), the commands of its host sessions appear in the update's trace under the handler's span.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path, PurePosixPath

from bus import tracing
from consumers.ops_executor.runner import CommandResult, HostRunner, HostSession, StagedFile


class TracedRunner:
    """``runner`` whose sessions open a span per call; the span names the program, not its arguments (long)."""

    def __init__(self, runner: HostRunner) -> None:
        self._runner = runner
        self.kind = runner.kind

    @contextlib.asynccontextmanager
    async def session(self, ip: str, update_id: str) -> AsyncIterator[HostSession]:
        async with self._runner.session(ip, update_id) as host:
            yield _TracedSession(host, ip, self.kind)


class _TracedSession:
    def __init__(self, host: HostSession, ip: str, kind: str) -> None:
        self._host, self._ip, self._kind = host, ip, kind

    async def run(self, argv: Sequence[str], *, stdin: bytes | None = None, timeout: float,
                  home: Path | None = None) -> CommandResult:
        program = PurePosixPath(argv[0]).name if argv else ""
        with tracing.span("remote command", {"server.address": self._ip, "process.executable.name": program,
                                             "hotupdate.runner": self._kind}):
            return await self._host.run(argv, stdin=stdin, timeout=timeout, home=home)

    async def put_files(self, files: Sequence[StagedFile], dest_dir: str, *, timeout: float) -> CommandResult:
        with tracing.span("put files", {"server.address": self._ip, "hotupdate.files": len(files),
                                        "hotupdate.runner": self._kind}):
            return await self._host.put_files(files, dest_dir, timeout=timeout)
