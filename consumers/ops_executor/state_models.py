"""The executor's tables (``executor_*``, the ``ops_executor`` Alembic branch) and their rows as records."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from sqlalchemy import Boolean, DateTime, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from consumers.ops_executor.records import (
    BatchNext,
    BatchRecord,
    UpdateRecord,
    UpdateStatus,
)
from domain.db import Base


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


def update_record(row: ExecutorUpdate) -> UpdateRecord:
    """A snapshot of one update's row."""
    status: UpdateStatus = row.status  # type: ignore[assignment]  # only written by this module
    return UpdateRecord(row.update_id, status, row.attempts, row.request, row.refused, row.final_result,
                        row.final_data, row.ok_count, row.failed_count, row.outcome,
                        tuple(json.loads(row.not_run or "[]")), row.waiting_batch, row.emitted or 0)


def batch_record(row: ExecutorBatch) -> BatchRecord:
    nxt: BatchNext = row.next  # type: ignore[assignment]  # only written by this module
    finished = row.finished_at if row.finished_at.tzinfo else row.finished_at.replace(tzinfo=UTC)
    return BatchRecord(row.batch, row.ok_count, row.failed_count, nxt, finished)


def now() -> datetime:
    return datetime.now(UTC)
