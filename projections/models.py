"""The projection's tables: the append-only event log, its head, and the status view.

The log is the audit record: one row per event id, in the order the projection received
them, each holding the envelope's canonical bytes and a link in a sha256 hash chain
(:mod:`projections.log`). The status view is derived from the log only (never from the
wall clock), so a replay of the log rebuilds it field for field (issue 6).

Per target (IP, game server, CDN dir, rsync target) a row says whether the update
*expected* it (the request or the executor's start named it) and whether it has
*reported*; what is expected and silent is what a stalled update is waiting for.
A result can be reported twice (a retry); ``result_key`` keeps the one from the event
that is latest in the update's causal order (see :func:`projections.view.order_key`),
whatever order they arrived in.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, Float, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from domain.db import Base

GENESIS_HASH = "0" * 64
"""The ``prev_hash`` of the first logged event."""


def as_utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; everything the projection stores is UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


# --- the log ----------------------------------------------------------------------

# An absent value is SQL NULL, never the JSON value null: the ORM writes an unset attribute as NULL
# but an explicit None (and a rebuild's bulk insert, projections/view/bulk_insert.py) as 'null' unless told
# otherwise, and the two differ to SQL (IS NULL) and to a row-by-row comparison of two databases.
OPTIONAL_JSON = JSON(none_as_null=True)


class LoggedEvent(Base):
    """One event as received: position in the global order, canonical envelope, hash-chain link."""

    __tablename__ = "projection_event_log"

    # Assigned by the appender under the head lock (not a database sequence): positions are
    # gapless and in commit order, so a missing row is visible as a gap as well as a broken link.
    position: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    event_id: Mapped[str] = mapped_column(String(128))
    type: Mapped[str] = mapped_column(String(128), index=True)
    updateid: Mapped[str] = mapped_column(String(64))
    project: Mapped[str] = mapped_column(String(64))
    area: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(256))
    sequence: Mapped[int] = mapped_column(BigInteger)
    event_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    envelope: Mapped[str] = mapped_column(Text, doc="Envelope.to_bytes() as UTF-8 text")
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))
    # The broker-verified AMQP user_id of the delivery ("" if the publisher set none), covered by
    # ``hash``; NULL on rows logged before publishers were recorded (projection_0004).
    publisher: Mapped[str | None] = mapped_column(String(128), nullable=True, default=None)

    __table_args__ = (
        UniqueConstraint("event_id", name="uq_projection_event_log_event_id"),
        UniqueConstraint("hash", name="uq_projection_event_log_hash"),
        Index("ix_projection_event_log_updateid_position", "updateid", "position"),
        Index("ix_projection_event_log_project_area", "project", "area"),
    )


class LogHead(Base):
    """The single row every writer locks first: the log's last position and hash, and a change counter.

    Locking it serialises appenders (the chain needs the previous hash); it also lets a
    verifier notice rows removed from the end. ``version`` grows with every committed
    change to the projection, which is what the dashboard's live stream watches.
    """

    __tablename__ = "projection_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    position: Mapped[int] = mapped_column(BigInteger, default=0)
    hash: Mapped[str] = mapped_column(String(64), default=GENESIS_HASH)
    version: Mapped[int] = mapped_column(BigInteger, default=0)


class AppliedEvent(Base):
    """A logged event whose effect is in the status view (logged but not applied means its reducer failed)."""

    __tablename__ = "projection_applied"

    event_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    position: Mapped[int] = mapped_column(BigInteger)
    updateid: Mapped[str] = mapped_column(String(64), index=True)


class RejectedEvent(Base):
    """A message the projection's consumer parked, with the reason, so the dashboard can list it.

    The same parking (a redelivery before the parked copy was confirmed) is counted in
    ``times`` rather than listed twice; ``dedupe_key`` is sha256 of the body and reason.
    Where the body is a readable envelope, its id, type and update are kept to link it.
    """

    __tablename__ = "projection_rejected"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    dedupe_key: Mapped[str] = mapped_column(String(64))
    service: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str] = mapped_column(Text)
    routing_key: Mapped[str] = mapped_column(String(256))
    message_id: Mapped[str | None] = mapped_column(String(256))
    event_id: Mapped[str | None] = mapped_column(String(128), index=True)
    event_type: Mapped[str | None] = mapped_column(String(128))
    updateid: Mapped[str | None] = mapped_column(String(64), index=True)
    project: Mapped[str | None] = mapped_column(String(64))
    area: Mapped[str | None] = mapped_column(String(64))
    source: Mapped[str | None] = mapped_column(String(256))
    body: Mapped[str] = mapped_column(Text, doc="the message body as UTF-8 text (undecodable bytes replaced)")
    body_bytes: Mapped[int] = mapped_column(Integer)
    attempt: Mapped[int] = mapped_column(Integer)
    first_parked_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    last_parked_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    times: Mapped[int] = mapped_column(Integer, default=1)

    __table_args__ = (UniqueConstraint("dedupe_key", name="uq_projection_rejected_dedupe_key"),)


# --- the status view --------------------------------------------------------------


class UpdateRow(Base):
    """One hot update (the seed's ``uuid``): what it is, who asked, how far it got, and its counts."""

    __tablename__ = "projection_updates"
    # the list filtered by status, most recently active first (projection_0003)
    __table_args__ = (Index("ix_projection_updates_status_last_event_at", "status", "last_event_at"),)

    updateid: Mapped[str] = mapped_column(String(64), primary_key=True)
    project: Mapped[str] = mapped_column(String(64), index=True)
    area: Mapped[str] = mapped_column(String(64), index=True)
    update_type: Mapped[str | None] = mapped_column(String(16), index=True)
    version: Mapped[str | None] = mapped_column(String(32))
    area_name: Mapped[str | None] = mapped_column(String(64))
    client_type: Mapped[int | None] = mapped_column(Integer)
    ops_manager: Mapped[str | None] = mapped_column(String(64))
    erlang_cmd_list: Mapped[list[str] | None] = mapped_column(OPTIONAL_JSON)
    rollout: Mapped[dict[str, Any] | None] = mapped_column(OPTIONAL_JSON, doc="the request's rollout plan, if any")
    # an update made from another one (retry of its failed targets, rollback)
    parent_updateid: Mapped[str | None] = mapped_column(String(64), index=True)
    relation: Mapped[str | None] = mapped_column(String(16))

    # who/what asked: the operator named in each request event, and the tool that sent it
    requested_by: Mapped[str | None] = mapped_column(String(64))
    pull_requested_by: Mapped[str | None] = mapped_column(String(64))
    push_requested_by: Mapped[str | None] = mapped_column(String(64))
    update_requested_by: Mapped[str | None] = mapped_column(String(64))
    pull_requested_source: Mapped[str | None] = mapped_column(String(256))
    update_requested_source: Mapped[str | None] = mapped_column(String(256))

    # derived from which events are present (never from arrival order)
    stage: Mapped[str] = mapped_column(String(32), index=True)
    status: Mapped[str] = mapped_column(String(32), index=True)
    final_result: Mapped[bool | None] = mapped_column(Boolean)
    final_data: Mapped[str | None] = mapped_column(Text)
    outcome: Mapped[str | None] = mapped_column(String(16), doc="succeeded, failed, stopped or aborted")
    not_run: Mapped[list[str] | None] = mapped_column(OPTIONAL_JSON, doc="targets the executor never started")
    completed_ok_count: Mapped[int | None] = mapped_column(Integer)
    completed_failed_count: Mapped[int | None] = mapped_column(Integer)

    source_dir: Mapped[str | None] = mapped_column(Text)
    backup_dir: Mapped[str | None] = mapped_column(Text)
    total_bytes: Mapped[int | None] = mapped_column(BigInteger)
    pull_failure: Mapped[str | None] = mapped_column(Text)
    push_failure: Mapped[str | None] = mapped_column(Text)
    abort_requested_by: Mapped[str | None] = mapped_column(String(64))
    abort_reason: Mapped[str | None] = mapped_column(Text)
    # the latest stall report; the update counts as stalled until an event other than a stall follows it
    stalled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    silent_targets: Mapped[list[str] | None] = mapped_column(OPTIONAL_JSON)
    stalled_after_seconds: Mapped[float | None] = mapped_column(Float)
    batches_total: Mapped[int | None] = mapped_column(Integer)
    batches_finished: Mapped[int] = mapped_column(Integer, default=0)
    awaiting_batch: Mapped[int | None] = mapped_column(Integer, doc="the batch waiting for an operator's go-ahead")
    # For each group of fields, the order key of the event that set them: an event only
    # overwrites a group if it is later in the update's causal order (order-independence).
    winners: Mapped[dict[str, str]] = mapped_column(JSON)

    # the event time (envelope ``time``) each stage was first reached
    pull_requested_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    pulled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    pull_failed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    push_requested_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    pushed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    push_failed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    update_requested_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    abort_requested_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    first_event_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    last_event_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    last_progress_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), doc="last event but stalls")
    event_count: Mapped[int] = mapped_column(Integer, default=0)

    # counts, recomputed from the target rows after every event
    servers_expected: Mapped[int] = mapped_column(Integer, default=0)
    servers_ok: Mapped[int] = mapped_column(Integer, default=0)
    servers_failed: Mapped[int] = mapped_column(Integer, default=0)
    servers_pending: Mapped[int] = mapped_column(Integer, default=0)
    servers_not_run: Mapped[int] = mapped_column(Integer, default=0)
    ips_expected: Mapped[int] = mapped_column(Integer, default=0)
    ips_ok: Mapped[int] = mapped_column(Integer, default=0)
    ips_failed: Mapped[int] = mapped_column(Integer, default=0)
    ips_pending: Mapped[int] = mapped_column(Integer, default=0)
    ips_not_run: Mapped[int] = mapped_column(Integer, default=0)
    cdn_dirs_expected: Mapped[int] = mapped_column(Integer, default=0)
    cdn_dirs_ok: Mapped[int] = mapped_column(Integer, default=0)
    cdn_dirs_failed: Mapped[int] = mapped_column(Integer, default=0)
    cdn_dirs_pending: Mapped[int] = mapped_column(Integer, default=0)
    cdn_dirs_not_run: Mapped[int] = mapped_column(Integer, default=0)
    targets_requested: Mapped[int] = mapped_column(Integer, default=0)
    targets_ok: Mapped[int] = mapped_column(Integer, default=0)
    targets_failed: Mapped[int] = mapped_column(Integer, default=0)
    files_count: Mapped[int] = mapped_column(Integer, default=0)


class RsyncTargetRow(Base):
    """One rsync daemon module an update's files were (to be) pushed to."""

    __tablename__ = "projection_rsync_targets"

    updateid: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    ip: Mapped[str | None] = mapped_column(String(128))
    port: Mapped[int | None] = mapped_column(Integer)
    module: Mapped[str | None] = mapped_column(String(64))
    user: Mapped[str | None] = mapped_column(String(64))
    requested: Mapped[bool] = mapped_column(Boolean, default=False)
    ok: Mapped[bool | None] = mapped_column(Boolean)
    bytes: Mapped[int | None] = mapped_column(BigInteger)
    seconds: Mapped[float | None] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(Text)
    reported_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    result_key: Mapped[str | None] = mapped_column(String(200))


class IpRow(Base):
    """One IP of a hot_server update (the seed reports per IP)."""

    __tablename__ = "projection_ips"

    updateid: Mapped[str] = mapped_column(String(64), primary_key=True)
    ip: Mapped[str] = mapped_column(String(128), primary_key=True)
    group: Mapped[str | None] = mapped_column(String(32))
    expected: Mapped[bool] = mapped_column(Boolean, default=False)
    reported: Mapped[bool] = mapped_column(Boolean, default=False)
    not_run: Mapped[bool] = mapped_column(Boolean, default=False, doc="the completion says it never started")
    ok: Mapped[bool | None] = mapped_column(Boolean)
    servers_ok: Mapped[int] = mapped_column(Integer, default=0)
    servers_failed: Mapped[int] = mapped_column(Integer, default=0)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    result_key: Mapped[str | None] = mapped_column(String(200))

    # The detail's failed-first order (projections.queries): one ordered range per (ok, reported,
    # not_run); on PostgreSQL projection_0002 gives ``ip`` the "C" collation the query orders by.
    __table_args__ = (Index("ix_projection_ips_failed_first", "updateid", "ok", "reported", "not_run", "ip"),)


class ServerRow(Base):
    """One game server: the seed's ``update_data`` and ``erl_data`` entries for it."""

    __tablename__ = "projection_servers"

    updateid: Mapped[str] = mapped_column(String(64), primary_key=True)
    ip: Mapped[str] = mapped_column(String(128), primary_key=True)
    server: Mapped[str] = mapped_column(String(128), primary_key=True)
    group: Mapped[str | None] = mapped_column(String(32))
    expected: Mapped[bool] = mapped_column(Boolean, default=False)
    reported: Mapped[bool] = mapped_column(Boolean, default=False)
    ok: Mapped[bool | None] = mapped_column(Boolean)
    update_status: Mapped[bool | None] = mapped_column(Boolean)
    update_text: Mapped[str | None] = mapped_column(Text)
    erl_status: Mapped[bool | None] = mapped_column(Boolean)
    erl_text: Mapped[str | None] = mapped_column(Text)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    result_key: Mapped[str | None] = mapped_column(String(200))

    # The detail's failed-first order (projections.queries): one ordered range per (reported, ok);
    # on PostgreSQL projection_0002 gives ``ip`` and ``server`` the "C" collation the query orders by.
    __table_args__ = (Index("ix_projection_servers_failed_first", "updateid", "reported", "ok", "ip", "server"),)


class CdnDirRow(Base):
    """One CDN dir of a hot_client update (the seed's per-dir ``status``)."""

    __tablename__ = "projection_cdn_dirs"

    updateid: Mapped[str] = mapped_column(String(64), primary_key=True)
    cdn_root_url: Mapped[str] = mapped_column(String(255), primary_key=True)
    cdn_dir: Mapped[str] = mapped_column(String(128), primary_key=True)
    expected: Mapped[bool] = mapped_column(Boolean, default=False)
    not_run: Mapped[bool] = mapped_column(Boolean, default=False, doc="the completion says it never started")
    status: Mapped[bool | None] = mapped_column(Boolean)
    data: Mapped[str | None] = mapped_column(Text)
    reported_by: Mapped[str | None] = mapped_column(String(64), doc="the event type the status came from")
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    result_key: Mapped[str | None] = mapped_column(String(200))


class FileRow(Base):
    """One file of an update, with md5 and size, and which steps it was part of."""

    __tablename__ = "projection_files"

    updateid: Mapped[str] = mapped_column(String(64), primary_key=True)
    # File names may be longer than an index entry allows (1024 characters of UTF-8): key by their sha256.
    name_key: Mapped[str] = mapped_column(String(64), primary_key=True)
    file_name: Mapped[str] = mapped_column(Text)
    file_md5: Mapped[str] = mapped_column(String(32))
    size: Mapped[int] = mapped_column(BigInteger)
    pulled: Mapped[bool] = mapped_column(Boolean, default=False)
    pushed: Mapped[bool] = mapped_column(Boolean, default=False)
    in_update: Mapped[bool] = mapped_column(Boolean, default=False)
    # "<rank>|<order key>" of the event whose md5/size is shown; rank 1 pull, 2 push, 3 update request
    source_key: Mapped[str] = mapped_column(String(220))


class BatchRow(Base):
    """One batch of an update with a rollout plan: its result, and the operator's go-ahead for it."""

    __tablename__ = "projection_batches"

    updateid: Mapped[str] = mapped_column(String(64), primary_key=True)
    batch: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    batches: Mapped[int | None] = mapped_column(Integer)
    ips: Mapped[list[str] | None] = mapped_column(OPTIONAL_JSON)
    cdn_dirs: Mapped[list[str] | None] = mapped_column(OPTIONAL_JSON)
    ok_count: Mapped[int | None] = mapped_column(Integer)
    failed_count: Mapped[int | None] = mapped_column(Integer)
    next: Mapped[str | None] = mapped_column(String(16))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    result_key: Mapped[str | None] = mapped_column(String(200))
    confirmed_by: Mapped[str | None] = mapped_column(String(64))
    confirmed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    confirm_key: Mapped[str | None] = mapped_column(String(200))


VIEW_TABLES: tuple[type[Any], ...] = (UpdateRow, RsyncTargetRow, IpRow, ServerRow, CdnDirRow, FileRow, BatchRow)
"""The status view: what a replay rebuilds and compares."""
