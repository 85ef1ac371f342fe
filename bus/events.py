"""The event catalogue: one frozen pydantic model per event type and version.

Read top to bottom, this module is the whole flow of a hot update, with the seed
document's field names kept where it has them. Each class says which component
publishes it and which consume it; ``events.md`` and the JSON Schemas are
generated from here (``hotupdate events docs``).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from domain.types import (
    CdnDir,
    HostName,
    IpAddress,
    Md5Hex,
    Operator,
    RelativeFileName,
    ServerGroup,
    ServerName,
    UpdateType,
    Version,
)


class Event(BaseModel):
    """Base of every event payload (the envelope's ``data``)."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=False)

    event_name: ClassVar[str]
    event_version: ClassVar[int]
    producer: ClassVar[str]
    consumers: ClassVar[tuple[str, ...]]

    @classmethod
    def type_name(cls) -> str:
        return f"hotupdate.{cls.event_name}.v{cls.event_version}"

    @classmethod
    def upcast(cls, data: dict[str, Any]) -> dict[str, Any]:
        """Turn the payload of version ``event_version - 1`` into this version's; v1 has nothing to do."""
        return data


# --- shared parts -----------------------------------------------------------------


class FileEntry(BaseModel):
    """One file of an update, relative to its ``reloadfiles`` directory."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    file_name: RelativeFileName
    file_md5: Md5Hex
    size: int = Field(ge=0)


class RsyncTargetRef(BaseModel):
    """Which rsync daemon module receives the files; the password file stays in the receiver's config."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    ip: IpAddress
    port: int = Field(ge=1, le=65535)
    module: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    user: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")


class RsyncTargetResult(RsyncTargetRef):
    ok: bool
    bytes: int = Field(default=0, ge=0)
    seconds: float = Field(default=0.0, ge=0)
    error: str = ""


class CdnTarget(BaseModel):
    """The seed's ``{'cdn_root_url': …, 'cdn_dir': …}``."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    cdn_root_url: HostName
    cdn_dir: CdnDir


class ServerResult(BaseModel):
    """The seed's ``{"data": "…", "status": bool}`` for one game server."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    data: str
    status: bool


UpdateServerList = dict[ServerGroup, dict[IpAddress, list[ServerName]]]


# --- 1. pull: CMDB → file_pull on the version receiver -----------------------------


class PullRequested(Event):
    """An operator asked for an update's files: copy the version's ``reloadfiles`` to a backup."""

    event_name = "pull.requested"
    event_version = 1
    producer = "cmdb"
    consumers = ("file_pull", "projection")

    update_type: UpdateType
    version: Version
    area_name: str = Field(min_length=1, max_length=64, description="the area's display name (大陆)")
    client_type: Literal[0, 1] | None = None
    requested_by: Operator



class FilesPulled(Event):
    """The version directory was copied to the update's backup directory; every file with md5 and size."""

    event_name = "files.pulled"
    event_version = 1
    producer = "file_pull"
    consumers = ("cmdb", "projection")

    update_type: UpdateType
    version: Version
    source_dir: str
    backup_dir: str
    files: list[FileEntry] = Field(min_length=1)
    total_bytes: int = Field(ge=0)


class PullFailed(Event):
    """The files could not be pulled (version directory missing, unreadable, empty)."""

    event_name = "pull.failed"
    event_version = 1
    producer = "file_pull"
    consumers = ("cmdb", "projection")

    update_type: UpdateType
    version: Version
    reason: Literal["version_missing", "unreadable", "empty", "error"]
    detail: str


# --- 2. push: CMDB → file_push on the version receiver → rsync to the ops manager --


class PushRequested(Event):
    """The operator confirmed the files; push them to every rsync target of the project and area."""

    event_name = "push.requested"
    event_version = 1
    producer = "cmdb"
    consumers = ("file_push", "projection")

    update_type: UpdateType
    version: Version
    files: list[FileEntry] = Field(min_length=1)
    targets: list[RsyncTargetRef] = Field(min_length=1)
    requested_by: Operator


class FilesPushed(Event):
    """Every rsync target received the files."""

    event_name = "files.pushed"
    event_version = 1
    producer = "file_push"
    consumers = ("cmdb", "projection")

    update_type: UpdateType
    version: Version
    targets: list[RsyncTargetResult] = Field(min_length=1)


class PushFailed(Event):
    """At least one rsync target did not receive the files; ``failed_targets`` names them."""

    event_name = "push.failed"
    event_version = 1
    producer = "file_push"
    consumers = ("cmdb", "projection")

    update_type: UpdateType
    version: Version
    targets: list[RsyncTargetResult]
    failed_targets: list[str]
    reason: str


# --- 3. the update: CMDB → ops_executor on the ops manager -------------------------


class UpdateRequested(Event):
    """Run the hot update (the seed's CMDB → ops manager request, both kinds)."""

    event_name = "update.requested"
    event_version = 1
    producer = "cmdb"
    consumers = ("ops_executor", "projection")

    update_type: UpdateType
    version: Version
    ops_manager: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    update_file_list: list[FileEntry] = Field(min_length=1)
    requested_by: Operator
    # hot_client
    client_type: Literal[0, 1] | None = None
    data: list[CdnTarget] | None = None
    # hot_server
    update_server_list: UpdateServerList | None = None
    erlang_cmd_list: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _fits_update_type(self) -> UpdateRequested:
        if self.update_type == "hot_client":
            if not self.data:
                raise ValueError("hot_client needs 'data': the CDN dirs to update")
            if self.update_server_list is not None or self.erlang_cmd_list:
                raise ValueError("hot_client takes no update_server_list or erlang_cmd_list")
        else:
            if not self.update_server_list or not any(self.update_server_list.values()):
                raise ValueError("hot_server needs 'update_server_list' with at least one IP")
            if self.data is not None:
                raise ValueError("hot_server takes no CDN 'data'")
            for cmd in self.erlang_cmd_list:
                if not cmd.strip() or "\x00" in cmd or len(cmd) > 4096:
                    raise ValueError("each erlang_cmd_list entry must be a non-empty Erlang expression")
        return self


class UpdateStarted(Event):
    """The ops manager accepted the update and started it (the seed's 'started' callback)."""

    event_name = "update.started"
    event_version = 1
    producer = "ops_executor"
    consumers = ("cmdb", "projection")

    update_type: UpdateType
    version: Version
    ops_manager: str
    ips: list[IpAddress] = Field(default_factory=list)
    cdn_dirs: list[CdnTarget] = Field(default_factory=list)


class CdnDirFinished(Event):
    """One CDN directory of a hot_client update is done (the seed's per-dir ``status``)."""

    event_name = "cdn_dir.finished"
    event_version = 1
    producer = "ops_executor"
    consumers = ("cmdb", "projection")

    version: Version
    cdn_root_url: HostName
    cdn_dir: CdnDir
    status: bool
    data: str = ""


class IpFinished(Event):
    """Every game server on one IP is done: files applied, Erlang commands run (the seed's per-IP callback)."""

    event_name = "ip.finished"
    event_version = 1
    producer = "ops_executor"
    consumers = ("cmdb", "projection")

    version: Version
    ip: IpAddress
    group: ServerGroup
    update_data: dict[ServerName, ServerResult]
    erl_data: dict[ServerName, ServerResult]


class UpdateCompleted(Event):
    """The update is over (the seed's final callback): ``final_result`` is true only if everything succeeded."""

    event_name = "update.completed"
    event_version = 1
    producer = "ops_executor"
    consumers = ("cmdb", "projection")

    update_type: UpdateType
    version: Version
    final_result: bool
    final_data: str
    data: list[dict[str, Any]] = Field(
        default_factory=list, description="hot_client: each CDN dir with its status, as in the seed"
    )
    ok_count: int = Field(default=0, ge=0)
    failed_count: int = Field(default=0, ge=0)


CATALOGUE: tuple[type[Event], ...] = (
    PullRequested,
    FilesPulled,
    PullFailed,
    PushRequested,
    FilesPushed,
    PushFailed,
    UpdateRequested,
    UpdateStarted,
    CdnDirFinished,
    IpFinished,
    UpdateCompleted,
)
