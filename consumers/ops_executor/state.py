"""What the executor remembers: each update's status and each target's result, recorded as it is done.

This is what makes a redelivered *update requested* harmless (a finished update is answered
from here, a target with a recorded result is never run twice) and what lets a restarted
executor resume an update it was running when it stopped. Tables: ``executor_*``, created
by the ``ops_executor`` Alembic branch.
"""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from sqlalchemy import Boolean, DateTime, ForeignKey, Integer, String, Text, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from bus.events import ServerResult
from domain.db import Base, make_engine, upgrade

UpdateStatus = Literal["running", "finished", "failed", "interrupted"]
# An update still in one of these has no result yet: a restarted executor resumes it.
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


@dataclass(frozen=True)
class UpdateRecord:
    """A snapshot of one update's row."""

    update_id: str
    status: UpdateStatus
    attempts: int
    request: str
    refused: bool
    final_result: bool | None
    final_data: str
    ok_count: int
    failed_count: int

    @classmethod
    def of(cls, row: ExecutorUpdate) -> UpdateRecord:
        status: UpdateStatus = row.status  # type: ignore[assignment]  # only written by this module
        return cls(row.update_id, status, row.attempts, row.request, row.refused, row.final_result,
                   row.final_data, row.ok_count, row.failed_count)


@dataclass(frozen=True)
class ServerOutcome:
    """One game server's two results, as the seed reports them (``update_data`` and ``erl_data``)."""

    update: ServerResult
    erl: ServerResult

    @property
    def ok(self) -> bool:
        return self.update.status and self.erl.status


ServerKey = tuple[str, str, str]  # (group, ip, server)
CdnKey = tuple[str, str]  # (cdn_root_url, cdn_dir)


def _now() -> datetime:
    return datetime.now(UTC)


class StateStore:
    """The executor's SQL state (SQLite file by default, PostgreSQL in production); sync and async calls."""

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
                return UpdateRecord.of(row), True
            if row.status in UNFINISHED:
                row.status = "running"
                row.attempts += 1
                session.commit()
            return UpdateRecord.of(row), False

    def get(self, update_id: str) -> UpdateRecord | None:
        with Session(self._engine) as session:
            row = session.get(ExecutorUpdate, update_id)
            return UpdateRecord.of(row) if row is not None else None

    def finish(self, update_id: str, *, status: UpdateStatus, final_result: bool, final_data: str,
               ok_count: int, failed_count: int, refused: bool = False) -> UpdateRecord:
        with Session(self._engine) as session:
            row = session.get(ExecutorUpdate, update_id)
            if row is None:
                raise KeyError(update_id)
            row.status, row.final_result, row.final_data = status, final_result, final_data
            row.ok_count, row.failed_count, row.refused = ok_count, failed_count, refused
            row.finished_at = _now()
            session.commit()
            return UpdateRecord.of(row)

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
            return [UpdateRecord.of(r) for r in rows]

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

    # --- async wrappers: the database is reached from a worker thread ------------------

    async def aclaim(self, *, update_id: str, project: str, area: str, update_type: str, version: str,
                     request: str) -> tuple[UpdateRecord, bool]:
        return await asyncio.to_thread(functools.partial(
            self.claim, update_id=update_id, project=project, area=area, update_type=update_type,
            version=version, request=request))

    async def aget(self, update_id: str) -> UpdateRecord | None:
        return await asyncio.to_thread(self.get, update_id)

    async def afinish(self, update_id: str, *, status: UpdateStatus, final_result: bool, final_data: str,
                      ok_count: int, failed_count: int, refused: bool = False) -> UpdateRecord:
        return await asyncio.to_thread(functools.partial(
            self.finish, update_id, status=status, final_result=final_result, final_data=final_data,
            ok_count=ok_count, failed_count=failed_count, refused=refused))

    async def arecord_server(self, update_id: str, key: ServerKey, outcome: ServerOutcome) -> None:
        await asyncio.to_thread(self.record_server, update_id, key, outcome)

    async def aserver_results(self, update_id: str) -> dict[ServerKey, ServerOutcome]:
        return await asyncio.to_thread(self.server_results, update_id)

    async def arecord_cdn(self, update_id: str, key: CdnKey, result: ServerResult) -> None:
        await asyncio.to_thread(self.record_cdn, update_id, key, result)

    async def acdn_results(self, update_id: str) -> dict[CdnKey, ServerResult]:
        return await asyncio.to_thread(self.cdn_results, update_id)

    async def amark_interrupted(self, update_id: str) -> None:
        await asyncio.to_thread(self.mark_interrupted, update_id)

    async def aunfinished(self) -> list[UpdateRecord]:
        return await asyncio.to_thread(self.unfinished)
