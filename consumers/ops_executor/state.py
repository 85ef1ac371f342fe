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
import json
from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy import Boolean, DateTime, Executable, ForeignKey, Integer, String, Text, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from bus.events import ServerResult
from consumers.ops_executor.records import (
    AbortRecord,
    BatchNext,
    BatchRecord,
    CdnKey,
    ServerKey,
    ServerOutcome,
    UpdateRecord,
    UpdateStatus,
    VerdictRecord,
)
from domain.db import Base, make_engine, upgrade

# An update still in one of these has no result yet: a restarted executor resumes it.
# ("waiting" for an operator's go-ahead is unfinished too, but only a go-ahead or an abort resumes it.)
UNFINISHED: tuple[UpdateStatus, ...] = ("running", "interrupted")


class ExecutorUpdate(Base):
    __tablename__ = "executor_updates"

    update_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    project: Mapped[str] = mapped_column(String(64))
    area: Mapped[str] = mapped_column(String(64))
    update_type: Mapped[str] = mapped_column(String(16))
    version: Mapped[str] = mapped_column(String(32))
    request: Mapped[str] = mapped_column(Text, doc="the request's envelope as JSON, to resume without it")
    status: Mapped[str] = mapped_column(String(16), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    refused: Mapped[bool] = mapped_column(Boolean, default=False)
    final_result: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    final_data: Mapped[str] = mapped_column(Text, default="")
    ok_count: Mapped[int] = mapped_column(Integer, default=0)
    failed_count: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    outcome: Mapped[str | None] = mapped_column(String(16), nullable=True)
    not_run: Mapped[str] = mapped_column(Text, default="[]", doc="JSON list of targets never started")
    waiting_batch: Mapped[int | None] = mapped_column(Integer, nullable=True, doc="the batch awaiting a go-ahead")
    emitted: Mapped[int] = mapped_column(
        Integer, default=0, doc="events published before the wait: a continuation's sequence numbers follow them"
    )


class ExecutorBatch(Base):
    __tablename__ = "executor_batches"

    update_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("executor_updates.update_id", ondelete="CASCADE"), primary_key=True
    )
    batch: Mapped[int] = mapped_column(Integer, primary_key=True)
    ok_count: Mapped[int] = mapped_column(Integer)
    failed_count: Mapped[int] = mapped_column(Integer)
    next: Mapped[str] = mapped_column(String(16))
    finished_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ExecutorConfirm(Base):
    __tablename__ = "executor_confirms"

    update_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("executor_updates.update_id", ondelete="CASCADE"), primary_key=True
    )
    batch: Mapped[int] = mapped_column(Integer, primary_key=True)
    confirmed_by: Mapped[str] = mapped_column(String(64))
    confirmed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ExecutorVerdict(Base):
    """An analysis tool's verdict on one batch (the first one counts)."""

    __tablename__ = "executor_verdicts"

    update_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("executor_updates.update_id", ondelete="CASCADE"), primary_key=True
    )
    batch: Mapped[int] = mapped_column(Integer, primary_key=True)
    verdict: Mapped[str] = mapped_column(String(8))
    reason: Mapped[str] = mapped_column(Text)
    link: Mapped[str] = mapped_column(Text)
    analysed_by: Mapped[str] = mapped_column(String(64))
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ExecutorAbort(Base):
    """No foreign key: an abort may arrive before the request it aborts."""

    __tablename__ = "executor_aborts"

    update_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    requested_by: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(Text)
    requested_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ExecutorServerResult(Base):
    __tablename__ = "executor_server_results"

    update_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("executor_updates.update_id", ondelete="CASCADE"), primary_key=True
    )
    group: Mapped[str] = mapped_column(String(16), primary_key=True)
    ip: Mapped[str] = mapped_column(String(64), primary_key=True)
    server: Mapped[str] = mapped_column(String(128), primary_key=True)
    update_status: Mapped[bool] = mapped_column(Boolean)
    update_data: Mapped[str] = mapped_column(Text)
    erl_status: Mapped[bool] = mapped_column(Boolean)
    erl_data: Mapped[str] = mapped_column(Text)
    recorded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ExecutorServerStart(Base):
    """A server something was started on. With no result beside it, its process was cut off mid-way:
    what ran is unknown, so it is reported as interrupted and never run a second time by itself."""

    __tablename__ = "executor_server_starts"

    update_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("executor_updates.update_id", ondelete="CASCADE"), primary_key=True
    )
    group: Mapped[str] = mapped_column(String(16), primary_key=True)
    ip: Mapped[str] = mapped_column(String(64), primary_key=True)
    server: Mapped[str] = mapped_column(String(128), primary_key=True)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ExecutorCdnResult(Base):
    __tablename__ = "executor_cdn_results"

    update_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("executor_updates.update_id", ondelete="CASCADE"), primary_key=True
    )
    cdn_root_url: Mapped[str] = mapped_column(String(255), primary_key=True)
    cdn_dir: Mapped[str] = mapped_column(String(128), primary_key=True)
    status: Mapped[bool] = mapped_column(Boolean)
    data: Mapped[str] = mapped_column(Text)
    recorded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


def _update_record(row: ExecutorUpdate) -> UpdateRecord:
    """A snapshot of one update's row."""
    status: UpdateStatus = row.status  # type: ignore[assignment]  # only written by this module
    return UpdateRecord(row.update_id, status, row.attempts, row.request, row.refused, row.final_result,
                        row.final_data, row.ok_count, row.failed_count, row.outcome,
                        tuple(json.loads(row.not_run or "[]")), row.waiting_batch, row.emitted or 0)


def _batch_record(row: ExecutorBatch) -> BatchRecord:
    nxt: BatchNext = row.next  # type: ignore[assignment]  # only written by this module
    finished = row.finished_at if row.finished_at.tzinfo else row.finished_at.replace(tzinfo=UTC)
    return BatchRecord(row.batch, row.ok_count, row.failed_count, nxt, finished)


def _now() -> datetime:
    return datetime.now(UTC)


class StateTables:
    """The executor's SQL tables (SQLite file by default, PostgreSQL in production), called synchronously.

    The executor reaches them through :class:`StateStore`; tests and tools may read them directly.
    """

    def __init__(self, url: str, *, migrate: bool = True) -> None:
        if migrate:
            upgrade(url, "ops_executor")
        self._engine = make_engine(url)

    def close(self) -> None:
        self._engine.dispose()

    # --- updates -----------------------------------------------------------------

    def claim(self, *, update_id: str, project: str, area: str, update_type: str, version: str,
              request: str) -> tuple[UpdateRecord, bool]:
        """Start recording an update, or take over an unfinished one; returns (record, newly created).

        Taking over counts an attempt, so an update that keeps killing its executor can be given up.
        """
        with Session(self._engine) as session:
            row = session.get(ExecutorUpdate, update_id)
            if row is None:
                row = ExecutorUpdate(update_id=update_id, project=project, area=area, update_type=update_type,
                                     version=version, request=request, status="running", attempts=1,
                                     refused=False, final_data="", ok_count=0, failed_count=0,
                                     started_at=_now())
                session.add(row)
                try:
                    session.commit()
                except IntegrityError:  # claimed concurrently: read the winner's row
                    session.rollback()
                    return self.claim(update_id=update_id, project=project, area=area,
                                      update_type=update_type, version=version, request=request)
                return _update_record(row), True
            if row.status in UNFINISHED:
                row.status = "running"
                row.attempts += 1
                session.commit()
            return _update_record(row), False

    def get(self, update_id: str) -> UpdateRecord | None:
        with Session(self._engine) as session:
            row = session.get(ExecutorUpdate, update_id)
            return _update_record(row) if row is not None else None

    def finish(self, update_id: str, *, status: UpdateStatus, final_result: bool, final_data: str,
               ok_count: int, failed_count: int, refused: bool = False, outcome: str | None = None,
               not_run: tuple[str, ...] | list[str] = ()) -> UpdateRecord:
        with Session(self._engine) as session:
            row = session.get(ExecutorUpdate, update_id)
            if row is None:
                raise KeyError(update_id)
            row.status, row.final_result, row.final_data = status, final_result, final_data
            row.ok_count, row.failed_count, row.refused = ok_count, failed_count, refused
            row.outcome = outcome or ("succeeded" if final_result else "failed")
            row.not_run = json.dumps(list(not_run), ensure_ascii=False)
            row.waiting_batch = None
            row.finished_at = _now()
            session.commit()
            return _update_record(row)

    def mark_waiting(self, update_id: str, *, batch: int, emitted: int) -> None:
        """Record that the update waits for a go-ahead for ``batch``; it holds nothing until one comes."""
        with Session(self._engine) as session:
            row = session.get(ExecutorUpdate, update_id)
            if row is None:
                raise KeyError(update_id)
            row.status, row.waiting_batch, row.emitted = "waiting", batch, emitted
            session.commit()

    def reopen(self, update_id: str) -> UpdateRecord | None:
        """A waiting update goes back to running (a go-ahead or abort came); None if it was not waiting.

        Not counted as a takeover: nothing was interrupted.
        """
        with Session(self._engine) as session:
            row = session.get(ExecutorUpdate, update_id)
            if row is None or row.status != "waiting":
                return None
            record = _update_record(row)  # as it was: waiting_batch and emitted tell where to go on
            row.status = "running"
            session.commit()
            return record

    def mark_interrupted(self, update_id: str) -> None:
        with Session(self._engine) as session:
            row = session.get(ExecutorUpdate, update_id)
            if row is not None and row.status == "running":
                row.status = "interrupted"
                session.commit()

    def unfinished(self) -> list[UpdateRecord]:
        """Updates a previous executor left running or interrupted, oldest first."""
        with Session(self._engine) as session:
            rows = session.scalars(
                select(ExecutorUpdate).where(ExecutorUpdate.status.in_(UNFINISHED))
                .order_by(ExecutorUpdate.started_at)
            ).all()
            return [_update_record(r) for r in rows]

    # --- batches, go-aheads, aborts ------------------------------------------------------

    def record_batch(self, update_id: str, batch: BatchRecord) -> BatchRecord:
        """Record a finished batch; the first record wins and is returned."""
        with Session(self._engine) as session:
            session.add(ExecutorBatch(update_id=update_id, batch=batch.batch, ok_count=batch.ok_count,
                                      failed_count=batch.failed_count, next=batch.next,
                                      finished_at=batch.finished_at))
            try:
                session.commit()
                return batch
            except IntegrityError:
                session.rollback()
            row = session.get(ExecutorBatch, (update_id, batch.batch))
            assert row is not None
            return _batch_record(row)

    def batches(self, update_id: str) -> dict[int, BatchRecord]:
        with Session(self._engine) as session:
            rows = session.scalars(select(ExecutorBatch).where(ExecutorBatch.update_id == update_id)).all()
            return {r.batch: _batch_record(r) for r in rows}

    def record_confirm(self, update_id: str, batch: int, confirmed_by: str) -> bool:
        """Record a go-ahead for ``batch``; False if the update is unknown here (the first record wins)."""
        with Session(self._engine) as session:
            if session.get(ExecutorUpdate, update_id) is None:
                return False
            session.add(ExecutorConfirm(update_id=update_id, batch=batch, confirmed_by=confirmed_by,
                                        confirmed_at=_now()))
            try:
                session.commit()
            except IntegrityError:
                session.rollback()
            return True

    def confirmed(self, update_id: str, batch: int) -> bool:
        with Session(self._engine) as session:
            return session.get(ExecutorConfirm, (update_id, batch)) is not None

    def record_verdict(self, update_id: str, verdict: VerdictRecord) -> bool:
        """Record a verdict on ``verdict.batch``; False if the update is unknown here (the first record wins)."""
        with Session(self._engine) as session:
            if session.get(ExecutorUpdate, update_id) is None:
                return False
            session.add(ExecutorVerdict(update_id=update_id, batch=verdict.batch, verdict=verdict.verdict,
                                        reason=verdict.reason, link=verdict.link, analysed_by=verdict.analysed_by,
                                        received_at=verdict.received_at))
            try:
                session.commit()
            except IntegrityError:
                session.rollback()
            return True

    def verdict(self, update_id: str, batch: int) -> VerdictRecord | None:
        with Session(self._engine) as session:
            row = session.get(ExecutorVerdict, (update_id, batch))
            return None if row is None else VerdictRecord(row.batch, row.verdict, row.reason, row.link,
                                                          row.analysed_by,
                                                          row.received_at if row.received_at.tzinfo
                                                          else row.received_at.replace(tzinfo=UTC))

    def record_abort(self, update_id: str, requested_by: str, reason: str) -> None:
        """Record an abort request (the first one wins), known or not yet known update alike."""
        with Session(self._engine) as session:
            session.add(ExecutorAbort(update_id=update_id, requested_by=requested_by, reason=reason,
                                      requested_at=_now()))
            try:
                session.commit()
            except IntegrityError:
                session.rollback()

    def abort_of(self, update_id: str) -> AbortRecord | None:
        with Session(self._engine) as session:
            row = session.get(ExecutorAbort, update_id)
            return AbortRecord(row.requested_by, row.reason) if row is not None else None

    # --- per-target results ------------------------------------------------------------

    def record_server(self, update_id: str, key: ServerKey, outcome: ServerOutcome) -> None:
        """Record a server's result; the first record wins (a server is never re-run once recorded)."""
        group, ip, server = key
        with Session(self._engine) as session:
            session.add(ExecutorServerResult(
                update_id=update_id, group=group, ip=ip, server=server,
                update_status=outcome.update.status, update_data=outcome.update.data,
                erl_status=outcome.erl.status, erl_data=outcome.erl.data, recorded_at=_now(),
            ))
            try:
                session.commit()
            except IntegrityError:
                session.rollback()

    def record_servers(self, rows: list[dict[str, object]]) -> None:
        """Record many servers' results in one transaction; a row already recorded is kept (first wins)."""
        self._insert_new(ExecutorServerResult, rows)

    def record_starts(self, rows: list[dict[str, object]]) -> None:
        """Note that work is starting on these servers (before any file or command reaches them)."""
        self._insert_new(ExecutorServerStart, rows)

    def started_servers(self, update_id: str) -> set[ServerKey]:
        with Session(self._engine) as session:
            rows = session.execute(
                select(ExecutorServerStart.group, ExecutorServerStart.ip, ExecutorServerStart.server)
                .where(ExecutorServerStart.update_id == update_id)
            ).all()
            return {(r[0], r[1], r[2]) for r in rows}

    def _insert_new(self, model: type[Base], rows: list[dict[str, object]]) -> None:
        dialect = self._engine.dialect.name
        statement: Executable
        if dialect == "postgresql":
            statement = postgresql_insert(model).on_conflict_do_nothing()
        elif dialect == "sqlite":
            statement = sqlite_insert(model).on_conflict_do_nothing()
        else:
            raise NotImplementedError(f"executor state on {dialect}: use SQLite or PostgreSQL")
        with self._engine.begin() as connection:
            connection.execute(statement, rows)

    def server_results(self, update_id: str) -> dict[ServerKey, ServerOutcome]:
        with Session(self._engine) as session:
            rows = session.scalars(
                select(ExecutorServerResult).where(ExecutorServerResult.update_id == update_id)
            ).all()
            return {
                (r.group, r.ip, r.server): ServerOutcome(
                    ServerResult(data=r.update_data, status=r.update_status),
                    ServerResult(data=r.erl_data, status=r.erl_status),
                )
                for r in rows
            }

    def record_cdn(self, update_id: str, key: CdnKey, result: ServerResult) -> None:
        """Record a CDN dir's result; the first record wins."""
        with Session(self._engine) as session:
            session.add(ExecutorCdnResult(update_id=update_id, cdn_root_url=key[0], cdn_dir=key[1],
                                          status=result.status, data=result.data, recorded_at=_now()))
            try:
                session.commit()
            except IntegrityError:
                session.rollback()

    def cdn_results(self, update_id: str) -> dict[CdnKey, ServerResult]:
        with Session(self._engine) as session:
            rows = session.scalars(
                select(ExecutorCdnResult).where(ExecutorCdnResult.update_id == update_id)
            ).all()
            return {(r.cdn_root_url, r.cdn_dir): ServerResult(data=r.data, status=r.status) for r in rows}


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
            "erl_status": outcome.erl.status, "erl_data": outcome.erl.data, "recorded_at": _now(),
        })

    async def start_server(self, update_id: str, key: ServerKey) -> None:
        """Record that ``key`` is starting, returning once committed (grouped like results)."""
        loop = asyncio.get_running_loop()
        if self._start_writer is None or self._start_writer.loop is not loop:
            self._start_writer = _GroupCommit(loop, self.tables.record_starts)
        group, ip, server = key
        await self._start_writer.submit(
            {"update_id": update_id, "group": group, "ip": ip, "server": server, "started_at": _now()}
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
