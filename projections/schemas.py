"""What the dashboard's JSON API returns (and its HTML pages render): read models of the status view.

A model whose fields are a table's columns is validated from the row itself (``from_attributes``):
the fields here are the API's contract, the table may hold more (a row's ``result_key``).
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

from projections.models import as_utc

Utc = Annotated[datetime, AfterValidator(as_utc)]
"""A time as stored: SQLite hands back naive datetimes, and everything the projection stores is UTC."""
Names = Annotated[list[str], BeforeValidator(lambda value: [] if value is None else value)]
"""A JSON list column, where SQL NULL (never set) reads as empty."""

UpdateStatus = Literal["in_progress", "awaiting_confirm", "stalled", "succeeded", "failed", "stopped", "aborted"]
UpdateTypeName = Literal["hot_client", "hot_server"]


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True, from_attributes=True)


class Counts(_Out):
    """Targets of one kind: expected (named by the request or the start), ok, failed, expected but silent
    (``pending``), and never started according to the completion (``not_run``: a stopped or aborted update)."""

    expected: int
    ok: int
    failed: int
    pending: int
    not_run: int = 0


class Progress(_Out):
    """How far an update's targets got: its game servers (hot_server) or its CDN dirs (hot_client)."""

    unit: Literal["servers", "cdn_dirs"]
    done: int = Field(description="ok + failed")
    ok: int
    failed: int
    expected: int


class TargetCounts(_Out):
    requested: int
    ok: int
    failed: int


class UpdateFilters(_Out):
    project: str | None = None
    area: str | None = None
    type: UpdateTypeName | None = None
    status: UpdateStatus | None = None
    date_from: date | None = Field(default=None, description="first event on or after this day (UTC)")
    date_to: date | None = Field(default=None, description="first event on or before this day (UTC)")
    page: int = Field(default=1, ge=1)
    page_size: int = Field(default=50, ge=1, le=500)


class UpdateSummary(_Out):
    # Its times are made UTC by projections.queries.summary: a validator per time cost a list page a third
    # of its validation.

    updateid: str
    project: str
    area: str
    update_type: str | None
    version: str | None
    stage: str
    status: str
    requested_by: str | None
    final_result: bool | None
    final_data: str | None
    first_event_at: datetime
    last_event_at: datetime
    completed_at: datetime | None
    event_count: int
    servers: Counts
    ips: Counts
    cdn_dirs: Counts
    rsync_targets: TargetCounts
    files_count: int
    running: bool = Field(False, description="not finished: in progress, awaiting an operator's go-ahead, or stalled")
    started_at: datetime | None = Field(None, description="when the ops manager started the update")
    finished_at: datetime | None = Field(None, description="completed, or the last event of an update that "
                                                           "ended without completing (a failed pull or push)")
    duration_seconds: float | None = Field(None, description="started (else first event) to finished; "
                                                             "null while running")
    progress: Progress | None = Field(None, description="servers (hot_server) or CDN dirs (hot_client) done "
                                                        "of expected; null before any is expected")


class UpdatePage(_Out):
    items: list[UpdateSummary]
    total: int
    page: int
    page_size: int
    pages: int
    filters: UpdateFilters


class StageStep(_Out):
    stage: str
    label: str
    at: Utc | None
    reached: bool
    failed: bool


class IpStatus(_Out):
    ip: str
    group: str | None
    expected: bool
    reported: bool
    not_run: bool
    ok: bool | None
    servers_ok: int
    servers_failed: int
    finished_at: Utc | None


class ServerStatus(_Out):
    ip: str
    server: str
    group: str | None
    expected: bool
    reported: bool
    not_run: bool = Field(description="not reported, and its IP never started (a stopped or aborted update)")
    ok: bool | None
    update_status: bool | None
    update_text: str | None
    erl_status: bool | None
    erl_text: str | None
    finished_at: Utc | None


class CdnDirStatus(_Out):
    cdn_root_url: str
    cdn_dir: str
    expected: bool
    not_run: bool
    status: bool | None
    data: str | None
    reported_by: str | None
    finished_at: Utc | None


class RsyncTargetStatus(_Out):
    name: str
    ip: str | None
    port: int | None
    module: str | None
    user: str | None
    requested: bool
    ok: bool | None
    bytes: int | None
    seconds: float | None
    error: str | None
    reported_at: Utc | None


class FileStatus(_Out):
    file_name: str
    file_md5: str
    size: int
    pulled: bool
    pushed: bool
    in_update: bool


class BatchStatus(_Out):
    batch: int
    batches: int | None
    ips: Names
    cdn_dirs: Names
    ok_count: int | None
    failed_count: int | None
    next: str | None
    finished_at: Utc | None
    confirmed_by: str | None
    confirmed_at: Utc | None


class LoggedEventOut(_Out):
    """An event of the log, as received (``envelope`` is the stored canonical envelope, parsed)."""

    position: int
    event_id: str
    type: str
    source: str
    sequence: int
    time: Utc
    received_at: Utc
    applied: bool
    envelope: dict[str, Any]
    publisher: str | None = Field(
        default=None, description="the broker user RabbitMQ verified as its publisher (AMQP user_id; \"\" if it "
        "set none); null for events logged before publishers were recorded")


class RejectedOut(_Out):
    id: int
    service: str
    reason: str
    routing_key: str
    message_id: str | None
    event_id: str | None
    event_type: str | None
    updateid: str | None
    project: str | None
    area: str | None
    source: str | None
    body: str
    body_bytes: int
    attempt: int
    first_parked_at: Utc
    last_parked_at: Utc
    times: int
    logged: bool = Field(description="an event with this id is in the log (it was fixed and requeued, or resent)")
    conflict: bool = Field(default=False, description="parked as a conflict: another event with this id and "
                           "different content was handled (logged) first; an operator decides which is genuine")
    update_known: bool = Field(False, description="the projection has the update it names (its page exists)")


class RejectedPage(_Out):
    items: list[RejectedOut]
    total: int
    page: int
    page_size: int
    pages: int


class UpdateDetail(UpdateSummary):
    area_name: str | None
    client_type: int | None
    ops_manager: str | None
    erlang_cmd_list: Names
    pull_requested_by: str | None
    push_requested_by: str | None
    update_requested_by: str | None
    pull_requested_source: str | None
    update_requested_source: str | None
    source_dir: str | None
    backup_dir: str | None
    total_bytes: int | None
    pull_failure: str | None
    push_failure: str | None
    completed_ok_count: int | None
    completed_failed_count: int | None
    outcome: str | None
    not_run: Names
    parent_updateid: str | None
    relation: str | None
    children: list[UpdateSummary] = Field(description="updates made from this one (retries, rollbacks)")
    rollout: dict[str, Any] | None
    batches_total: int | None
    batches_finished: int
    awaiting_batch: int | None
    batch_list: list[BatchStatus]
    abort_requested_at: Utc | None
    abort_requested_by: str | None
    abort_reason: str | None
    stalled_at: Utc | None
    silent_targets: Names
    stalled_after_seconds: float | None
    last_progress_at: Utc | None
    timeline: list[StageStep]
    ip_list: list[IpStatus] = Field(description="failed first, then silent, then never started, then ok "
                                                "(one page of them)")
    ips_total: int = Field(0, description="the update's IPs in all (ip_list may hold a page of them)")
    ips_offset: int = Field(0, description="where ip_list starts in the failed-first order")
    server_list: list[ServerStatus] = Field(description="failed first, then silent, then ok (one page of them)")
    servers_total: int = Field(0, description="the update's servers in all (server_list may hold a page of them)")
    servers_offset: int = Field(0, description="where server_list starts in the failed-first order")
    cdn_dir_list: list[CdnDirStatus]
    rsync_target_list: list[RsyncTargetStatus]
    file_list: list[FileStatus]
    events: list[LoggedEventOut] = Field(description="the update's events in log order")
    events_total: int
    rejected: list[RejectedOut]


class LiveState(_Out):
    """What the live stream watches: the log's last position, the change counter, the last rejection."""

    position: int
    version: int
    rejected: int


class LiveChange(LiveState):
    updates: list[str] | None = Field(description="the updates that changed; null when it cannot tell (any may have)")
