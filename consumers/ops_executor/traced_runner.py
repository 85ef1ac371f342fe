"""A span around each remote command and file delivery of a runner (bus/tracing.py; nothing when tracing is off).

A wrapper rather than an edit of each runner: whichever runner the configuration picks (local,
ssh), its commands appear in the update's trace under the handler's span.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from bus import tracing
from consumers.ops_executor.runner import CommandResult, HostRunner, StagedFile


class TracedRunner:
    """``runner`` with a span per call; the span names the program, not its arguments (they may be long)."""

    def __init__(self, runner: HostRunner) -> None:
        self._runner = runner
        self.kind = runner.kind

    async def run(
        self, ip: str, argv: Sequence[str], *, stdin: bytes | None = None, timeout: float, home: Path | None = None
    ) -> CommandResult:
        program = PurePosixPath(argv[0]).name if argv else ""
        with tracing.span("remote command", {"server.address": ip, "process.executable.name": program,
                                             "hotupdate.runner": self.kind}):
            return await self._runner.run(ip, argv, stdin=stdin, timeout=timeout, home=home)

    async def put_files(
        self, ip: str, files: Sequence[StagedFile], dest_dir: str, *, timeout: float
    ) -> CommandResult:
        with tracing.span("put files", {"server.address": ip, "hotupdate.files": len(files),
                                        "hotupdate.runner": self.kind}):
            return await self._runner.put_files(ip, files, dest_dir, timeout=timeout)
