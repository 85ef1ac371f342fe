"""hot_server IPs run in parallel, never more at once than the configured concurrency."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

from consumers.ops_executor.executor import Executor
from consumers.ops_executor.runner import CommandResult, HostSession, StagedFile
from consumers.ops_executor.state import StateStore
from tests.ops_world import OPS, World, hot_server_request
from tests.recording import RecordingEmitter


class GaugeRunner:
    """A host runner that takes a while per step and notes how many IPs it was busy with at once."""

    kind = "gauge"

    def __init__(self) -> None:
        self.busy: set[str] = set()
        self.peak = 0
        self.calls: list[tuple[str, str]] = []

    async def _step(self, ip: str, what: str) -> CommandResult:
        self.busy.add(ip)
        self.peak = max(self.peak, len(self.busy))
        self.calls.append((ip, what))
        await asyncio.sleep(0.2)
        self.busy.discard(ip)
        return CommandResult(ok=True, returncode=0, stdout="{ok, ok}")

    async def run(self, ip: str, argv: Sequence[str], *, stdin: bytes | None = None,
                  timeout: float, home: Path | None = None) -> CommandResult:
        return await self._step(ip, "erl")

    async def put_files(self, ip: str, files: Sequence[StagedFile], dest_dir: str, *,
                        timeout: float) -> CommandResult:
        return await self._step(ip, "apply")

    @asynccontextmanager
    async def session(self, ip: str, update_id: str) -> AsyncIterator[HostSession]:
        yield _Bound(self, ip)


class _Bound:
    def __init__(self, runner: GaugeRunner, ip: str) -> None:
        self._runner, self._ip = runner, ip

    async def run(self, argv: Sequence[str], *, stdin: bytes | None = None, timeout: float,
                  home: Path | None = None) -> CommandResult:
        return await self._runner.run(self._ip, argv, stdin=stdin, timeout=timeout, home=home)

    async def put_files(self, files: Sequence[StagedFile], dest_dir: str, *, timeout: float) -> CommandResult:
        return await self._runner.put_files(self._ip, files, dest_dir, timeout=timeout)


async def test_ips_run_in_parallel_up_to_the_concurrency_limit(tmp_path):
    world = World(tmp_path)
    uid = str(uuid.uuid4())
    ips = {f"127.0.0.{i}": [f"qq_{i}"] for i in range(1, 7)}
    env, event = hot_server_request(world, uid, world.push(uid, {"m.beam": b"x"}), {"game": ips}, ["c:l(m)"])
    config = world.config(concurrency=2)
    runner = GaugeRunner()
    executor = Executor(ops_manager=OPS, config=config.ops_managers[OPS], store=StateStore(world.state_url),
                        projects=config.projects, runner=runner)

    await executor.handle(env, event, RecordingEmitter(env))

    assert runner.peak == 2
    for ip in ips:  # on each IP, files first, then the command
        assert [what for i, what in runner.calls if i == ip] == ["apply", "erl"]
