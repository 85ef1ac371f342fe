"""The CMDB's tables: hot updates, what their targets reported, and the outbox of events to publish.

The outbox is written in the same transaction as the state it belongs to, so an event
exists exactly when the state change that caused it was committed; the relay
(:mod:`producers.cmdb.outbox`) publishes it afterwards.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, ForeignKey, Index, Integer, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from domain.db import Base


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; everything the CMDB stores is UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


class HotUpdate(Base):
    """One hot update (the seed's ``uuid``) from the operator's request to the executor's final result."""

    __tablename__ = "cmdb_hot_updates"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    # A retry or rollback (operator actions) is a new update linked to the one it repeats.
    parent_id: Mapped[str | None] = mapped_column(String(36), ForeignKey("cmdb_hot_updates.id"), index=True)
    project: Mapped[str] = mapped_column(String(64))
    area_name: Mapped[str] = mapped_column(String(64))
    area_code: Mapped[str] = mapped_column(String(64))
    update_type: Mapped[str] = mapped_column(String(16))
    client_type: Mapped[int | None] = mapped_column(Integer)
    version: Mapped[str] = mapped_column(String(32))
    requested_by: Mapped[str] = mapped_column(String(64))
    push_requested_by: Mapped[str | None] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(32), index=True)
    reason: Mapped[str | None] = mapped_column(Text)
    final_data: Mapped[str | None] = mapped_column(Text)

    erlang_cmd_list: Mapped[list[str]] = mapped_column(JSON, default=list)
    backup_dir: Mapped[str | None] = mapped_column(Text)
    files: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    chosen_files: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    rsync_targets: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    ops_manager: Mapped[str | None] = mapped_column(String(64))
    # What the update runs on, fixed when the operator pushes: {"update_server_list": …} or {"data": […]}.
    update_targets: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    narrowed: Mapped[bool] = mapped_column(Boolean, default=False)

    # Issue 9: how the update relates to parent_id, its rollout plan, and (for a retry or a
    # rollback, which the CMDB pushes itself once pulled) the files to push:
    # {"files": [names], "md5": {name: md5} | null (the pulled files must still match)}.
    relation: Mapped[str | None] = mapped_column(String(16))
    rollout: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    auto_push: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # From the executor: the completion's outcome and not-run targets, the latest batch finished.
    outcome: Mapped[str | None] = mapped_column(String(16))
    completion_reason: Mapped[str | None] = mapped_column(Text)  # the reason once every result is in
    not_run: Mapped[list[str] | None] = mapped_column(JSON)
    last_batch: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # Stall detection: when the executor (or the operator's go-ahead) last moved the update, and
    # the silence period a stall was already reported for (one report per period).
    last_event_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    stalled_for: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    # The chain of events, so late or stale events can be recognised and sequences continued.
    last_sequence: Mapped[int] = mapped_column(Integer, default=0)
    pull_event_id: Mapped[str | None] = mapped_column(String(128))
    pulled_event_id: Mapped[str | None] = mapped_column(String(128))
    push_event_id: Mapped[str | None] = mapped_column(String(128))
    update_event_id: Mapped[str | None] = mapped_column(String(128))

    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)
    pulled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    push_requested_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    pushed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    update_requested_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    def saw_sequence(self, sequence: int) -> None:
        self.last_sequence = max(self.last_sequence or 0, sequence)

    def next_sequence(self) -> int:
        """The sequence number for an event the CMDB starts itself (the push, later operator actions)."""
        self.last_sequence = (self.last_sequence or 0) + 1
        return self.last_sequence


class TargetResult(Base):
    """What one IP (all its game servers) or one CDN dir reported, as the executor's events said."""

    __tablename__ = "cmdb_target_results"

    update_id: Mapped[str] = mapped_column(String(36), ForeignKey("cmdb_hot_updates.id"), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), primary_key=True)  # "ip" or "cdn_dir"
    target: Mapped[str] = mapped_column(String(255), primary_key=True)  # an IP, or "<cdn_root_url>/<cdn_dir>"
    ok: Mapped[bool] = mapped_column(Boolean)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON)
    event_id: Mapped[str] = mapped_column(String(128))
    reported_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class OutboxMessage(Base):
    """An event to publish; ``published_at`` stays null until the broker confirmed it."""

    __tablename__ = "cmdb_outbox"
    __table_args__ = (Index("ix_cmdb_outbox_unpublished", "published_at", "id"),)

    # Publishing order: the order the rows were written in.
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(128), unique=True)
    update_id: Mapped[str] = mapped_column(String(64), index=True)
    event_type: Mapped[str] = mapped_column(String(128))
    routing_key: Mapped[str] = mapped_column(String(255))
    envelope: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    published_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)


class Release(Base):
    """A version a team's pipeline announced (*release announced*), once per project, area, type and version.

    ``update_id`` is set when its pull started (by the project's ``auto_pull_on_release`` or an operator).
    """

    __tablename__ = "cmdb_releases"
    __table_args__ = (
        UniqueConstraint("project", "area_code", "update_type", "version", name="uq_cmdb_releases_version"),
    )

    id: Mapped[str] = mapped_column(String(128), primary_key=True)  # the announcement's event id
    announced_updateid: Mapped[str] = mapped_column(String(64))  # the update id its pull takes
    project: Mapped[str] = mapped_column(String(64))
    area_code: Mapped[str] = mapped_column(String(64))
    update_type: Mapped[str] = mapped_column(String(16))
    version: Mapped[str] = mapped_column(String(32))
    client_type: Mapped[int | None] = mapped_column(Integer)
    files: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    announced_by: Mapped[str] = mapped_column(String(64))  # the pipeline's label
    publisher: Mapped[str] = mapped_column(String(128))  # the broker user that published it (verified)
    link: Mapped[str] = mapped_column(Text, default="")
    announced_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    update_id: Mapped[str | None] = mapped_column(String(36), ForeignKey("cmdb_hot_updates.id"))
    pull_started_by: Mapped[str | None] = mapped_column(String(64))  # an operator, or "auto_pull_on_release"
