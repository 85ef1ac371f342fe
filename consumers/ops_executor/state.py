"""What the executor remembers: each update's status and each target's result, recorded as it is done.

This is what makes a redelivered *update requested* harmless (a finished update is answered
from here, a target with a recorded result is never run twice) and what lets a restarted
executor resume an update it was running when it stopped. A rolled-out update also keeps
each finished batch (so its *batch finished* is decided once), the operators' go-aheads
and abort requests (which may arrive before the executor gets to them), and, while it
waits for a go-ahead, that it is waiting: status "waiting" is neither resumed at start nor
holding a consumer. Tables: ``executor_*``, created by the ``ops_executor`` Alembic branch.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable

from bus.contract.events import ServerResult
from consumers.ops_executor.records import (
    AbortRecord,
    BatchRecord,
    CdnKey,
    ServerKey,
    ServerOutcome,
    UpdateRecord,
    UpdateStatus,
    VerdictRecord,
)
from consumers.ops_executor.state_models import now
from consumers.ops_executor.state_tables import StateTables


class StateStore:
    """The executor's state for async code: one method per question or record, each awaited.

    The tables (:class:`StateTables`) are reached from a worker thread; servers' results and
    starts, which many IPs record at once, share transactions (:class:`_GroupCommit`).
    """

    def __init__(self, url: str, *, migrate: bool = True) -> None:
        self.tables = StateTables(url, migrate=migrate)
        self._server_writer: _GroupCommit | None = None
        self._start_writer: _GroupCommit | None = None

    def close(self) -> None:
        self.tables.close()


    async def claim(self, *, update_id: str, project: str, area: str, update_type: str, version: str,
                     request: str) -> tuple[UpdateRecord, bool]:
        return await asyncio.to_thread(functools.partial(
            self.tables.claim, update_id=update_id, project=project, area=area, update_type=update_type,
            version=version, request=request))

    async def get(self, update_id: str) -> UpdateRecord | None:
        return await asyncio.to_thread(self.tables.get, update_id)

    async def finish(self, update_id: str, *, status: UpdateStatus, final_result: bool, final_data: str,
                      ok_count: int, failed_count: int, refused: bool = False, outcome: str | None = None,
                      not_run: tuple[str, ...] | list[str] = ()) -> UpdateRecord:
        return await asyncio.to_thread(functools.partial(
            self.tables.finish, update_id, status=status, final_result=final_result, final_data=final_data,
            ok_count=ok_count, failed_count=failed_count, refused=refused, outcome=outcome, not_run=not_run))

    async def mark_waiting(self, update_id: str, *, batch: int, emitted: int) -> None:
        await asyncio.to_thread(functools.partial(self.tables.mark_waiting, update_id, batch=batch, emitted=emitted))

    async def reopen(self, update_id: str) -> UpdateRecord | None:
        return await asyncio.to_thread(self.tables.reopen, update_id)

    async def record_batch(self, update_id: str, batch: BatchRecord) -> BatchRecord:
        return await asyncio.to_thread(self.tables.record_batch, update_id, batch)

    async def batches(self, update_id: str) -> dict[int, BatchRecord]:
        return await asyncio.to_thread(self.tables.batches, update_id)

    async def record_confirm(self, update_id: str, batch: int, confirmed_by: str) -> bool:
        return await asyncio.to_thread(self.tables.record_confirm, update_id, batch, confirmed_by)

    async def confirmed(self, update_id: str, batch: int) -> bool:
        return await asyncio.to_thread(self.tables.confirmed, update_id, batch)

    async def record_verdict(self, update_id: str, verdict: VerdictRecord) -> bool:
        return await asyncio.to_thread(self.tables.record_verdict, update_id, verdict)

    async def verdict(self, update_id: str, batch: int) -> VerdictRecord | None:
        return await asyncio.to_thread(self.tables.verdict, update_id, batch)

    async def record_abort(self, update_id: str, requested_by: str, reason: str) -> None:
        await asyncio.to_thread(self.tables.record_abort, update_id, requested_by, reason)

    async def abort_of(self, update_id: str) -> AbortRecord | None:
        return await asyncio.to_thread(self.tables.abort_of, update_id)

    async def record_server(self, update_id: str, key: ServerKey, outcome: ServerOutcome) -> None:
        """Record a server's result, returning once it is committed.

        Results arriving together (many IPs in parallel) share one transaction: a commit
        per server dominated a large update's CPU (see BENCHMARKS.md, benchmark 3).
        """
        loop = asyncio.get_running_loop()
        if self._server_writer is None or self._server_writer.loop is not loop:
            self._server_writer = _GroupCommit(loop, self.tables.record_servers)
        group, ip, server = key
        await self._server_writer.submit({
            "update_id": update_id, "group": group, "ip": ip, "server": server,
            "update_status": outcome.update.status, "update_data": outcome.update.data,
            "erl_status": outcome.erl.status, "erl_data": outcome.erl.data, "recorded_at": now(),
        })

    async def start_server(self, update_id: str, key: ServerKey) -> None:
        """Record that ``key`` is starting, returning once committed (grouped like results)."""
        loop = asyncio.get_running_loop()
        if self._start_writer is None or self._start_writer.loop is not loop:
            self._start_writer = _GroupCommit(loop, self.tables.record_starts)
        group, ip, server = key
        await self._start_writer.submit(
            {"update_id": update_id, "group": group, "ip": ip, "server": server, "started_at": now()}
        )

    async def started_servers(self, update_id: str) -> set[ServerKey]:
        return await asyncio.to_thread(self.tables.started_servers, update_id)

    async def server_results(self, update_id: str) -> dict[ServerKey, ServerOutcome]:
        return await asyncio.to_thread(self.tables.server_results, update_id)

    async def record_cdn(self, update_id: str, key: CdnKey, result: ServerResult) -> None:
        await asyncio.to_thread(self.tables.record_cdn, update_id, key, result)

    async def cdn_results(self, update_id: str) -> dict[CdnKey, ServerResult]:
        return await asyncio.to_thread(self.tables.cdn_results, update_id)

    async def mark_interrupted(self, update_id: str) -> None:
        await asyncio.to_thread(self.tables.mark_interrupted, update_id)

    async def unfinished(self) -> list[UpdateRecord]:
        return await asyncio.to_thread(self.tables.unfinished)


class _GroupCommit:
    """Writes rows submitted while a write is under way together, in the next transaction.

    Each submitter waits for the commit that holds its row, so "recorded" still means
    committed before the caller goes on; one writer at a time keeps SQLite's lock uncontended.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, write: Callable[[list[dict[str, object]]], None]) -> None:
        self.loop = loop
        self._write = write
        self._pending: list[tuple[dict[str, object], asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def submit(self, row: dict[str, object]) -> None:
        done: asyncio.Future[None] = self.loop.create_future()
        self._pending.append((row, done))
        if self._writer is None or self._writer.done():
            self._writer = self.loop.create_task(self._drain())
        await done

    async def _drain(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                await asyncio.to_thread(self._write, [row for row, _ in batch])
            except Exception as exc:
                for _, done in batch:
                    if not done.done():
                        done.set_exception(exc)
            else:
                for _, done in batch:
                    if not done.done():
                        done.set_result(None)
