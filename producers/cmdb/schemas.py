"""The CMDB's HTTP contract: request and response bodies, validated at the boundary."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, AliasChoices, BaseModel, ConfigDict, Field

from bus.contract.events import FileEntry, RolloutPlanV2
from domain.types import RelativeFileName, ServerName, UpdateType, Version
from producers.cmdb.models import as_utc

UtcDatetime = Annotated[datetime, AfterValidator(as_utc)]
"""A time the CMDB stored (UTC), aware in every response: SQLite hands it back naive."""


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StartUpdateRequest(_Body):
    """Start a hot update: the version receiver pulls the version's files."""

    project: str = Field(min_length=1, max_length=64, examples=["ssss"])
    area: str = Field(min_length=1, max_length=64, description="display name (大陆) or code (cn)")
    area_code: str | None = Field(
        default=None, max_length=64, description="which code, when the display name maps to several"
    )
    update_type: UpdateType = Field(validation_alias=AliasChoices("update_type", "type"))
    version: Version = Field(examples=["004200000"])
    client_type: Literal[0, 1] | None = Field(default=None, description="hot_client only")
    erlang_cmd_list: list[str] | None = Field(
        default=None, description="hot_server only; default: the project's configured commands"
    )


class PushRequest(_Body):
    """Confirm the push; every list is optional and narrows what the update touches."""

    files: list[RelativeFileName] | None = Field(default=None, description="pulled files to push (default: all)")
    servers: list[ServerName] | None = Field(default=None, description="hot_server: only these game servers")
    cdn_dirs: list[str] | None = Field(
        default=None, description="hot_client: only these CDN dirs (<cdn_dir> or <cdn_root_url>/<cdn_dir>)"
    )
    rollout: RolloutPlanV2 | None = Field(default=None, description="batches; absent: every target in one batch")
    update_server_list: dict[str, dict[str, list[str]]] | None = Field(
        default=None, description="hot_server: only these servers, in the seed's shape group → IP → servers; "
        "each must be in the inventory, on that IP, in that group (instead of servers)",
    )


class AbortRequest(_Body):
    reason: str = Field(default="", max_length=1000, description="why, for the record and the executor's log")


class LinkedUpdateRequest(_Body):
    """Retry failed or rollback: the new update's rollout plan (absent: one batch)."""

    rollout: RolloutPlanV2 | None = None


class CreatedResponse(BaseModel):
    id: str
    state: str


class FilesResponse(BaseModel):
    id: str
    state: str
    files: list[FileEntry]


class TargetResultResponse(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    kind: str = Field(description="ip or cdn_dir")
    target: str
    ok: bool
    detail: dict[str, Any]
    reported_at: UtcDatetime | None


class UpdateResponse(BaseModel):
    """An update as operators see it: where it stands, why it stopped, what each target reported."""

    model_config = ConfigDict(from_attributes=True)
    id: str
    parent_id: str | None
    project: str
    area_name: str
    area_code: str
    update_type: str
    client_type: int | None
    version: str
    requested_by: str
    push_requested_by: str | None
    state: str
    reason: str | None
    final_data: str | None
    files: list[dict[str, Any]] | None
    chosen_files: list[dict[str, Any]] | None
    rsync_targets: list[dict[str, Any]] | None
    ops_manager: str | None
    update_targets: dict[str, Any] | None
    narrowed: bool
    erlang_cmd_list: list[str]
    created_at: UtcDatetime | None
    updated_at: UtcDatetime | None
    pulled_at: UtcDatetime | None
    push_requested_at: UtcDatetime | None
    pushed_at: UtcDatetime | None
    update_requested_at: UtcDatetime | None
    started_at: UtcDatetime | None
    finished_at: UtcDatetime | None
    relation: str | None = Field(default=None, description="retry_failed or rollback of parent_id")
    rollout: dict[str, Any] | None = None
    outcome: str | None = Field(default=None, description="the executor's: succeeded, failed, stopped, aborted")
    not_run: list[str] = Field(default_factory=list, description="targets the executor never started")
    last_batch: dict[str, Any] | None = Field(default=None, description="the latest batch finished")
    last_event_at: UtcDatetime | None = None
    stalled_for: UtcDatetime | None = Field(
        default=None, description="set to last_event_at when that silence was reported as a stall"
    )
    missing_targets: list[str] = Field(
        default_factory=list, description="expected IPs (ip/group) or CDN dirs with no result and not in not_run"
    )
    results: list[TargetResultResponse]


class ErrorResponse(BaseModel):
    detail: str


class ReleaseResponse(BaseModel):
    """A release a team's pipeline announced; ``update_id`` is null while it waits for an operator."""

    model_config = ConfigDict(from_attributes=True)
    id: str
    project: str
    area_code: str
    update_type: str
    version: str
    client_type: int | None
    files: list[dict[str, Any]]
    announced_by: str
    publisher: str
    link: str
    announced_at: datetime
    update_id: str | None
    pull_started_by: str | None
