"""The event catalogue: one frozen pydantic model per event type and version.

Read top to bottom, this module is the whole flow of a hot update, with the seed
document's field names kept where it has them. Each class says which component
publishes it and which consume it; ``events.md`` and the JSON Schemas are
generated from here (``hotupdate events docs``).
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, Self

from annotated_types import Interval
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, model_validator

from domain.json_values import MAX_JSON_INT, Count, Ordinal, Percent, Port, Rfc3339Time, json_integer
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

# Every model of the contract: immutable, no unknown fields, no NaN or Infinity (not JSON). Documents
# are validated strictly (Registry.decode), as the JSON Schemas say; Python callers may pass tuples.
# A rule between fields is stated twice, as a model validator and as JSON Schema (``json_schema_extra``),
# so the generated schemas refuse what the validator refuses (tests/unit/test_contract_agreement.py).
CONTRACT = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class Event(BaseModel):
    """Base of every event payload (the envelope's ``data``)."""

    model_config = CONTRACT

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

    model_config = CONTRACT
    file_name: RelativeFileName
    file_md5: Md5Hex
    size: Count


class RsyncTargetRef(BaseModel):
    """Which rsync daemon module receives the files; the password file stays in the receiver's config."""

    model_config = CONTRACT
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    ip: IpAddress
    port: Port
    module: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    user: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")


class RsyncTargetResult(RsyncTargetRef):
    ok: bool
    bytes: Count = 0
    seconds: float = Field(default=0.0, ge=0)
    error: str = ""


class CdnTarget(BaseModel):
    """The seed's ``{'cdn_root_url': …, 'cdn_dir': …}``."""

    model_config = CONTRACT
    cdn_root_url: HostName
    cdn_dir: CdnDir


class ServerResult(BaseModel):
    """The seed's ``{"data": "…", "status": bool}`` for one game server."""

    model_config = CONTRACT
    data: str
    status: bool


UpdateServerList = dict[ServerGroup, dict[IpAddress, list[ServerName]]]


def _not_boolean(value: Any) -> Any:
    # true == 1 in Python, not in JSON Schema's enum
    if isinstance(value, bool):
        raise ValueError("must be 0 or 1, not a boolean")
    return value


ClientType = Annotated[Literal[0, 1], BeforeValidator(_not_boolean)]

# str.strip()'s whitespace, spelled out so pydantic (Rust regex), Python and ECMA-262 regexes agree.
_WHITESPACE = r"\t\n\x0b\x0c\r\x1c-\x1f \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
ErlangCommand = Annotated[
    str, StringConstraints(max_length=4096, pattern=rf"^[^\x00]*[^\x00{_WHITESPACE}][^\x00]*$")
]
"""One Erlang expression for erl_call: not blank, no NUL, at most 4096 characters."""

_CLIENT_TYPE = ("hot_client only: the seed's 0 or 1, the operator's label of which client build; carried and "
                "shown, ignored by the ops executor (events.md, `client_type`)")


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
    client_type: ClientType | None = Field(default=None, description=_CLIENT_TYPE)
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
    total_bytes: Count


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


_ONE_SIZE_SCHEMA: dict[str, Any] = {
    "not": {
        "required": ["batch_size", "batch_percent"],
        "properties": {"batch_size": {"type": "integer"}, "batch_percent": {"type": "integer"}},
    },
}


class _RolloutPlanBody(BaseModel):
    """The fields every version of the rollout plan has."""

    model_config = ConfigDict(**CONTRACT, json_schema_extra=_ONE_SIZE_SCHEMA)
    batch_size: Ordinal | None = Field(default=None, description="targets per batch")
    batch_percent: Percent | None = Field(
        default=None, description="targets per batch as a percentage of all, rounded up"
    )
    pause_seconds: float = Field(
        default=0, ge=0, le=86400, description="wait between the end of a batch and the start of the next"
    )
    on_failure: Literal["stop", "continue", "confirm"] = Field(
        default="stop",
        description="a batch with a failed target: stop (the rest is not run), continue, "
        "or confirm (wait for batch.confirmed before the next batch)",
    )

    @model_validator(mode="after")
    def _one_size(self) -> Self:
        if self.batch_size is not None and self.batch_percent is not None:
            raise ValueError("give batch_size or batch_percent, not both")
        return self


# Frozen: the plan of update.requested v2, published as ``RolloutPlan`` (its name, docstring and fields are
# that schema's; change nothing here). update.requested v3 carries RolloutPlanV2. The newer plan takes the
# suffix, unlike the events: a class's name is its ``$defs`` name in the schemas, which the published one
# keeps, and asyncapi.yaml gathers every event's ``$defs`` in one namespace, so the two need distinct names.
class RolloutPlan(_RolloutPlanBody):
    """How an update's targets are split into batches, and what a failed batch does.

    A batch is a count (``batch_size``) or a percentage (``batch_percent``, rounded up, at
    least one) of the update's IPs (hot_server) or CDN dirs (hot_client), taken in the order
    *update started* lists them: IPs by group (game, cross, cross_center), then by address
    within a group (an IP in several groups goes with its first, all its servers in one batch);
    CDN dirs in the request's order. Neither given: one batch, as without a plan.
    """


class RolloutPlanV2(_RolloutPlanBody):
    """How an update's targets are split into batches, what a failed batch does, and what gates the next.

    A batch is a count (``batch_size``) or a percentage (``batch_percent``, rounded up, at
    least one) of the update's IPs (hot_server) or CDN dirs (hot_client), taken in the order
    *update started* lists them: IPs by group (game, cross, cross_center), then by address
    within a group (an IP in several groups goes with its first, all its servers in one batch);
    CDN dirs in the request's order. Neither given: one batch, as without a plan. v2 of the
    plan (in *update requested* v3) adds ``analysis_timeout_seconds``.
    """

    analysis_timeout_seconds: float | None = Field(
        default=None, gt=0, le=86400,
        description="an analysis step after every batch but the last that would continue: the next batch "
        "starts on an analysis.verdict 'pass' for it; 'fail', or none within this many seconds of the "
        "batch's end, stops the rollout",
    )


_FITS_UPDATE_TYPE_SCHEMA: dict[str, Any] = {
    "if": {"properties": {"update_type": {"const": "hot_client"}}},
    "then": {
        "required": ["data"],
        "properties": {
            "data": {"type": "array", "minItems": 1},
            "update_server_list": {"type": "null"},
            "erlang_cmd_list": {"maxItems": 0},
        },
    },
    "else": {
        "required": ["update_server_list"],
        "properties": {
            # an object with at least one group that has at least one IP
            "update_server_list": {"type": "object", "not": {"additionalProperties": {"maxProperties": 0}}},
            "data": {"type": "null"},
        },
    },
}
_LINK_IS_WHOLE_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"required": ["parent_id", "relation"],
         "properties": {"parent_id": {"type": "string"}, "relation": {"type": "string"}}},
        {"properties": {"parent_id": {"type": "null"}, "relation": {"type": "null"}}},
    ],
}


class _UpdateRequestBody(Event):
    """The fields every version of *update requested* has (the seed's request, both kinds)."""

    model_config = ConfigDict(**CONTRACT, json_schema_extra=_FITS_UPDATE_TYPE_SCHEMA)

    update_type: UpdateType
    version: Version
    ops_manager: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    update_file_list: list[FileEntry] = Field(min_length=1)
    requested_by: Operator
    # hot_client
    client_type: ClientType | None = Field(default=None, description=_CLIENT_TYPE)
    data: list[CdnTarget] | None = None
    # hot_server
    update_server_list: UpdateServerList | None = None
    erlang_cmd_list: list[ErlangCommand] = Field(default_factory=list)

    @model_validator(mode="after")
    def _fits_update_type(self) -> _UpdateRequestBody:
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
        return self


class UpdateRequestedV1(_UpdateRequestBody):
    """Run the hot update (v1: no rollout plan, no link to another update). Upcast to v2 on receipt."""

    event_name = "update.requested"
    event_version = 1
    producer = "cmdb"
    consumers = ("ops_executor", "projection")


class _LinkedUpdateRequestBody(_UpdateRequestBody):
    """The fields of *update requested* from v2 on: a link to another update (the rollout plan differs)."""

    model_config = ConfigDict(
        **CONTRACT, json_schema_extra={"allOf": [_FITS_UPDATE_TYPE_SCHEMA, _LINK_IS_WHOLE_SCHEMA]}
    )

    parent_id: str | None = Field(
        default=None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9-]+$",
        description="the update this one was made from",
    )
    relation: Literal["retry_failed", "rollback"] | None = Field(
        default=None, description="how it relates to parent_id"
    )

    @model_validator(mode="after")
    def _link_is_whole(self) -> Self:
        if (self.parent_id is None) != (self.relation is None):
            raise ValueError("parent_id and relation go together")
        return self


# Frozen: update.requested v2 as it was published (title, docstring, fields: its schema must not change).
# Upcast to v3 on receipt. Older tools still send it.
class UpdateRequestedV2(_LinkedUpdateRequestBody):
    """Run the hot update (the seed's CMDB → ops manager request, both kinds), optionally in batches.

    ``rollout`` absent: every target in one batch, as the seed does. ``parent_id`` and
    ``relation`` link an update made from another one (retry of its failed targets, rollback).
    """

    event_name = "update.requested"
    event_version = 2
    producer = "cmdb"
    consumers = ("ops_executor", "projection")
    model_config = ConfigDict(title="UpdateRequested")  # the name v2 was published under

    rollout: RolloutPlan | None = Field(default=None, description="absent: one batch")

    @classmethod
    def upcast(cls, data: dict[str, Any]) -> dict[str, Any]:
        """v1 → v2: no rollout plan (one batch), no parent."""
        return {**data, "rollout": None, "parent_id": None, "relation": None}


class UpdateRequested(_LinkedUpdateRequestBody):
    """Run the hot update (the seed's CMDB → ops manager request, both kinds), optionally in batches.

    ``rollout`` absent: every target in one batch, as the seed does. ``parent_id`` and
    ``relation`` link an update made from another one (retry of its failed targets, rollback).
    v3 adds the rollout plan's analysis step (``analysis_timeout_seconds``).
    """

    event_name = "update.requested"
    event_version = 3
    producer = "cmdb"
    consumers = ("ops_executor", "projection")

    rollout: RolloutPlanV2 | None = Field(default=None, description="absent: one batch")

    @classmethod
    def upcast(cls, data: dict[str, Any]) -> dict[str, Any]:
        """v2 → v3: a v2 plan has no analysis step; every v2 payload is a v3 payload as it is."""
        return data


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
    consumers = ("cmdb", "projection", "notifier")

    version: Version
    ip: IpAddress
    group: ServerGroup
    update_data: dict[ServerName, ServerResult]
    erl_data: dict[ServerName, ServerResult]


class _BatchFinishedBody(Event):
    """The fields every version of *batch finished* has (``next`` gains values from version to version)."""

    batch: Ordinal = Field(description="1-based")
    batches: Ordinal = Field( description="how many batches the update has")
    ips: list[IpAddress] = Field(default_factory=list, description="hot_server: the batch's IPs")
    cdn_dirs: list[CdnTarget] = Field(default_factory=list, description="hot_client: the batch's CDN dirs")
    ok_count: Count
    failed_count: Count
    next: str  # each version narrows it to its Literal

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.batch > self.batches:
            raise ValueError("batch is beyond batches")
        if (self.next == "done") != (self.batch == self.batches):
            raise ValueError("next is 'done' exactly for the last batch")
        return self


# Frozen: batch.finished v1 as it was published (title, docstring, fields: its schema must not change).
# Upcast to v2 on receipt; every v1 ``next`` is a v2 one.
class BatchFinishedV1(_BatchFinishedBody):
    """One batch of an update with a rollout plan is done; ``next`` says what the executor does now.

    Sent only for updates whose request carries a rollout plan, after the batch's last
    *IP finished* / *CDN dir finished*. ``next``: ``continue`` (the next batch starts
    ``pause_seconds`` after this one finished), ``stop`` (no further batch starts: the batch
    failed under ``on_failure: stop``, or an abort was requested), ``await_confirm`` (the batch
    failed under ``on_failure: confirm``: batch ``batch + 1`` starts when *batch confirmed* for
    it arrives), ``done`` (this was the last batch). A batch failed when any of its game
    servers (or CDN dirs) failed. The counts are as in *update completed*, for this batch.
    """

    event_name = "batch.finished"
    event_version = 1
    producer = "ops_executor"
    consumers = ("cmdb", "projection")
    model_config = ConfigDict(title="BatchFinished")  # the name v1 was published under

    next: Literal["continue", "stop", "await_confirm", "done"]


class BatchFinished(_BatchFinishedBody):
    """One batch of an update with a rollout plan is done; ``next`` says what the executor does now.

    Sent only for updates whose request carries a rollout plan, after the batch's last
    *IP finished* / *CDN dir finished*. ``next``: ``continue`` (the next batch starts
    ``pause_seconds`` after this one finished), ``stop`` (no further batch starts: the batch
    failed under ``on_failure: stop``, or an abort was requested), ``await_confirm`` (the batch
    failed under ``on_failure: confirm``: batch ``batch + 1`` starts when *batch confirmed* for
    it arrives), ``await_analysis`` (the plan has an analysis step: batch ``batch + 1`` starts on
    *analysis verdict* ``pass`` for this batch), ``done`` (this was the last batch). A batch failed
    when any of its game servers (or CDN dirs) failed. The counts are as in *update completed*, for
    this batch. v2 adds ``await_analysis``.
    """

    event_name = "batch.finished"
    event_version = 2
    producer = "ops_executor"
    consumers = ("cmdb", "projection")

    next: Literal["continue", "stop", "await_confirm", "await_analysis", "done"]

    @classmethod
    def upcast(cls, data: dict[str, Any]) -> dict[str, Any]:
        """v1 → v2: nothing to change; ``await_analysis`` is only new."""
        return data


class BatchConfirmed(Event):
    """An operator's go-ahead for batch ``batch`` of an update waiting after a failed batch.

    Only meaningful after *batch finished* with ``next: await_confirm`` and ``batch`` one less;
    the executor ignores it for an update it does not run, and for a finished one.
    """

    event_name = "batch.confirmed"
    event_version = 1
    producer = "cmdb"
    consumers = ("ops_executor", "projection")

    batch: Annotated[int, Interval(ge=2, le=MAX_JSON_INT), BeforeValidator(json_integer)] = Field(
        description="the batch to start (batch 1 never waits)"
    )
    confirmed_by: Operator


class UpdateAbortRequested(Event):
    """An operator asked to abort a running update.

    The executor lets the game servers and CDN dirs already started finish (a server's files
    and all its commands), starts nothing more (no IP, no server, no CDN dir, no batch), and
    ends with *update completed* ``outcome: aborted``, what never started in ``not_run``. A
    waiting update (``await_confirm``) completes at once. An abort that comes after every
    target started changes nothing: the completion then says succeeded or failed. One that
    comes before the request makes the update complete aborted with everything in ``not_run``.
    """

    event_name = "update.abort_requested"
    event_version = 1
    producer = "cmdb"
    consumers = ("ops_executor", "projection")

    requested_by: Operator
    reason: str = Field(default="", max_length=1000)


class _UpdateCompletedBody(Event):
    update_type: UpdateType
    version: Version
    final_result: bool
    final_data: str
    data: list[dict[str, Any]] = Field(
        default_factory=list, description="hot_client: each CDN dir with its status, as in the seed"
    )
    ok_count: Count = 0
    failed_count: Count = 0


class UpdateCompletedV1(_UpdateCompletedBody):
    """The update is over (v1: no outcome, no not-run list). Upcast to v2 on receipt."""

    event_name = "update.completed"
    event_version = 1
    producer = "ops_executor"
    consumers = ("cmdb", "projection")


Outcome = Literal["succeeded", "failed", "aborted", "stopped"]


def _null_allowed(schema: dict[str, Any]) -> None:
    """A field's JSON Schema that also takes null (a before-validator derives the value from others)."""
    own = {key: schema.pop(key) for key in ("type", "enum", "const") if key in schema}
    schema["anyOf"] = [own, {"type": "null"}]


class UpdateCompleted(_UpdateCompletedBody):
    """The update is over (the seed's final callback): ``final_result`` is true only if everything succeeded.

    ``outcome``: ``succeeded`` (every target ran and succeeded: the only case with
    ``final_result`` true), ``failed`` (every target ran or was cut short, some failed),
    ``stopped`` (a batch failed under ``on_failure: stop``; the later batches never started),
    ``aborted`` (an abort request kept targets from starting). ``not_run`` names the targets
    that never started, which have no *IP finished* / *CDN dir finished*: hot_server IPs
    (``ip/group`` when an IP serves several groups: the key of its *IP finished*), hot_client
    ``cdn_root_url/cdn_dir``. The counts are of game servers (hot_server) or CDN dirs
    (hot_client) with a result: a game server of a started IP that an abort kept from
    starting has one ("已中止,未执行") and counts as failed; targets in ``not_run`` count in
    neither. A refused update (``final_data`` "拒绝执行: …") ran nothing and lists nothing.
    """

    event_name = "update.completed"
    event_version = 2
    producer = "ops_executor"
    consumers = ("cmdb", "projection", "notifier")
    model_config = ConfigDict(**CONTRACT, json_schema_extra={
        "if": {"properties": {"final_result": {"const": True}}},
        "then": {"properties": {"outcome": {"enum": ["succeeded", None]}}},
        "else": {"properties": {"outcome": {"not": {"const": "succeeded"}}}},
    })

    outcome: Outcome = Field(
        default="failed", description="when absent or null: succeeded if final_result is true, else failed",
        json_schema_extra=_null_allowed,  # null is taken (and derived) as the validator does
    )
    not_run: list[str] = Field(default_factory=list, description="targets never started")

    @model_validator(mode="before")
    @classmethod
    def _outcome_from_result(cls, data: Any) -> Any:
        # Producers that predate outcome (and v1 events) give final_result only.
        if isinstance(data, dict) and data.get("outcome") is None and isinstance(data.get("final_result"), bool):
            return {**data, "outcome": "succeeded" if data["final_result"] else "failed"}
        return data

    @model_validator(mode="after")
    def _outcome_fits_result(self) -> UpdateCompleted:
        if self.final_result != (self.outcome == "succeeded"):
            raise ValueError("final_result is true exactly when outcome is 'succeeded'")
        return self

    @classmethod
    def upcast(cls, data: dict[str, Any]) -> dict[str, Any]:
        """v1 → v2: outcome from final_result; nothing was left unrun."""
        return {**data, "outcome": "succeeded" if data["final_result"] else "failed", "not_run": []}


class UpdateStalled(Event):
    """An unfinished update has had no event for ``stalled_after_seconds``; ``silent_targets`` never reported.

    Targets are named as in *update completed*'s ``not_run`` (IP, ``ip/group``, or
    ``cdn_root_url/cdn_dir``). Published by the CMDB's stall detector.
    """

    event_name = "update.stalled"
    event_version = 1
    producer = "cmdb"
    consumers = ("projection", "notifier")

    silent_targets: list[str]
    last_event_at: Rfc3339Time
    stalled_after_seconds: float = Field(gt=0)


# --- outside tools: what other teams' tools publish (producer "team": only the teams granted it) ---


TEAM_PRODUCER = "team"
"""The producer of events other teams' tools publish; ``broker.teams`` says which team may (bus/identity.py)."""


class ReleaseFile(BaseModel):
    """One file of an announced release, as the build pipeline made it."""

    model_config = CONTRACT
    file_name: RelativeFileName
    file_md5: Md5Hex


class ReleaseAnnounced(Event):
    """A build or release pipeline says a version is ready for a project and area (the envelope's).

    The CMDB records it as a pending release once per (project, area, ``update_type``, ``version``):
    announcing it again does nothing. Where the project's ``auto_pull_on_release`` is set it starts
    the pull at once, else an operator does (``POST /api/releases/{id}/pull``). The update it starts
    takes the envelope's ``updateid`` (choose a fresh UUID per announcement, ``sequence`` 0), so the
    release and its update are one chain on the dashboard.
    """

    event_name = "release.announced"
    event_version = 1
    producer = TEAM_PRODUCER
    consumers = ("cmdb", "projection")

    update_type: UpdateType
    version: Version
    files: list[ReleaseFile] = Field(min_length=1, description="what the pipeline built, with md5")
    client_type: ClientType | None = Field(default=None, description=_CLIENT_TYPE)
    announced_by: Operator = Field(description="the pipeline's name, shown to operators")
    link: str = Field(default="", max_length=2000, description="the build's page, for humans")


class AnalysisVerdict(Event):
    """A monitoring or analysis tool's verdict on batch ``batch`` of a running update (Argo's analysis step).

    Only meaningful for an update whose rollout plan has ``analysis_timeout_seconds``, after
    *batch finished* with ``next: await_analysis`` for ``batch``: ``pass`` starts the next batch,
    ``fail`` stops the rollout (``outcome: stopped``, the reason in ``final_data``). The first
    verdict for a batch counts; one that comes after the timeout changes nothing. Join the
    update's chain as docs/publishing.md says (causationid: the *batch finished*).
    """

    event_name = "analysis.verdict"
    event_version = 1
    producer = TEAM_PRODUCER
    consumers = ("ops_executor", "cmdb", "projection")

    batch: Ordinal = Field(description="the batch analysed (1-based)")
    verdict: Literal["pass", "fail"]
    reason: str = Field(default="", max_length=1000)
    link: str = Field(default="", max_length=2000, description="the analysis's page, for humans")
    analysed_by: Operator = Field(description="the tool's name")


# Rules between two fields that JSON Schema cannot state (it compares no field with another): the
# validator enforces them, the schemas say them in their description only. Keyed by type, the texts
# are the validator's messages.
RULES_BEYOND_JSON_SCHEMA: dict[str, tuple[str, ...]] = {
    "hotupdate.batch.finished.v1": ("batch is beyond batches", "next is 'done' exactly for the last batch"),
    "hotupdate.batch.finished.v2": ("batch is beyond batches", "next is 'done' exactly for the last batch"),
}

CATALOGUE: tuple[type[Event], ...] = (
    PullRequested,
    FilesPulled,
    PullFailed,
    PushRequested,
    FilesPushed,
    PushFailed,
    UpdateRequestedV1,
    UpdateRequestedV2,
    UpdateRequested,
    UpdateStarted,
    CdnDirFinished,
    IpFinished,
    BatchFinishedV1,
    BatchFinished,
    BatchConfirmed,
    UpdateAbortRequested,
    UpdateCompletedV1,
    UpdateCompleted,
    UpdateStalled,
    ReleaseAnnounced,
    AnalysisVerdict,
)
