"""What operators can do with hot updates: start, push, look. Each call is one transaction.

A call that publishes writes the state change and the event into the outbox together,
so a refused request publishes nothing and an accepted one publishes exactly its event.
Operator actions added later (abort, retry failed, rollback, confirm) follow the same
shape: load with a lock, ``require`` the state, change it, ``enqueue`` the event.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from bus.events import Event, FileEntry, PullRequested, PushRequested
from bus.registry import make_envelope
from domain.config import HotupdateConfig
from domain.types import UpdateType
from producers.cmdb.areas import project_config, resolve_area
from producers.cmdb.database import CmdbDatabase
from producers.cmdb.errors import BadState, InvalidChoice, NotFound
from producers.cmdb.models import HotUpdate, TargetResult, as_utc, utcnow
from producers.cmdb.outbox import enqueue
from producers.cmdb.states import CAN_PUSH, State, require
from producers.cmdb.targets import rsync_targets, update_targets

SOURCE = "hotupdate/cmdb"

E = TypeVar("E", bound=Event)


@dataclass(frozen=True)
class StartUpdate:
    """An operator's request for a new hot update of one project and area."""

    project: str
    area: str  # display name (大陆) or code (cn)
    update_type: UpdateType
    version: str
    area_code: str | None = None  # chooses among the codes of a display name
    client_type: int | None = None  # hot_client only: the seed's 0 or 1
    erlang_cmd_list: Sequence[str] | None = None  # hot_server only; default: the project's


@dataclass(frozen=True)
class PushUpdate:
    """The operator's confirmation: which pulled files to push (None: all), optionally fewer targets."""

    files: Sequence[str] | None = None
    servers: Sequence[str] | None = None
    cdn_dirs: Sequence[str] | None = None


@dataclass(frozen=True)
class TargetView:
    kind: str
    target: str
    ok: bool
    detail: dict[str, Any]
    reported_at: datetime | None


@dataclass(frozen=True)
class UpdateView:
    """A snapshot of one update for operators."""

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
    created_at: datetime | None
    updated_at: datetime | None
    pulled_at: datetime | None
    push_requested_at: datetime | None
    pushed_at: datetime | None
    update_requested_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    results: list[TargetView] = field(default_factory=list)


def start_update(database: CmdbDatabase, config: HotupdateConfig, cmd: StartUpdate, requested_by: str) -> str:
    """Record a new update and queue *pull requested*; returns the update id."""
    area = resolve_area(config, cmd.project, cmd.update_type, cmd.area, cmd.area_code)
    proj = project_config(config, cmd.project)
    if cmd.update_type == "hot_client":
        if cmd.client_type not in (0, 1):
            raise InvalidChoice("a hot_client update needs client_type 0 or 1")
        if cmd.erlang_cmd_list:
            raise InvalidChoice("a hot_client update takes no erlang_cmd_list")
        erlang_cmds: list[str] = []
    else:
        if cmd.client_type is not None:
            raise InvalidChoice("client_type is for hot_client updates only")
        erlang_cmds = list(cmd.erlang_cmd_list) if cmd.erlang_cmd_list is not None else list(proj.erlang_cmd_list)
    update_id = str(uuid.uuid4())
    event = _event(
        PullRequested,
        update_type=cmd.update_type,
        version=cmd.version,
        area_name=area.name,
        client_type=cmd.client_type,
        requested_by=requested_by,
    )
    envelope = make_envelope(
        event, source=SOURCE, updateid=update_id, project=cmd.project, area=area.code, sequence=0
    )
    now = utcnow()
    with database.transaction() as session:
        session.add(
            HotUpdate(
                id=update_id,
                project=cmd.project,
                area_name=area.name,
                area_code=area.code,
                update_type=cmd.update_type,
                client_type=cmd.client_type,
                version=cmd.version,
                requested_by=requested_by,
                state=State.PULL_REQUESTED,
                erlang_cmd_list=erlang_cmds,
                narrowed=False,
                last_sequence=0,
                pull_event_id=envelope.id,
                created_at=now,
                updated_at=now,
            )
        )
        enqueue(session, envelope)
    return update_id


def push_update(
    database: CmdbDatabase, config: HotupdateConfig, update_id: str, cmd: PushUpdate, requested_by: str
) -> UpdateView:
    """Confirm the push of the chosen pulled files to the area's rsync targets; queue *push requested*."""
    with database.transaction() as session:
        row = _load(session, update_id, lock=True)
        require(update_id, row.state, CAN_PUSH, "push")
        chosen = _chosen_files(row, cmd.files)
        proj = project_config(config, row.project)
        refs, ops_manager = rsync_targets(row.project, proj, row.area_name)
        targets = update_targets(
            row.project, proj, row.area_code, _update_type(row), servers=cmd.servers, cdn_dirs=cmd.cdn_dirs
        )
        event = _event(
            PushRequested,
            update_type=row.update_type,
            version=row.version,
            files=chosen,
            targets=refs,
            requested_by=requested_by,
        )
        envelope = make_envelope(
            event,
            source=SOURCE,
            updateid=row.id,
            project=row.project,
            area=row.area_code,
            sequence=row.next_sequence(),
            causationid=row.pulled_event_id,
        )
        row.state = State.PUSH_REQUESTED
        row.reason = None
        row.push_requested_by = requested_by
        row.chosen_files = [f.model_dump(mode="json") for f in chosen]
        row.rsync_targets = [t.model_dump(mode="json") for t in refs]
        row.ops_manager = ops_manager
        row.update_targets = targets
        row.narrowed = cmd.servers is not None or cmd.cdn_dirs is not None
        row.push_event_id = envelope.id
        row.push_requested_at = utcnow()
        enqueue(session, envelope)
        return _view(session, row)


def get_update(database: CmdbDatabase, update_id: str) -> UpdateView:
    """The update's state, files, targets and what each target reported."""
    with database.transaction() as session:
        return _view(session, _load(session, update_id))


def pulled_files(database: CmdbDatabase, update_id: str) -> tuple[str, list[FileEntry]]:
    """The update's state and the files the version receiver pulled; BadState until the pull has finished."""
    with database.transaction() as session:
        row = _load(session, update_id)
        if row.files is None:
            why = f": {row.reason}" if row.reason else ""
            raise BadState(f"update {update_id} has no pulled files: it is {row.state}{why}")
        return row.state, [FileEntry.model_validate(f) for f in row.files]


def _load(session: Session, update_id: str, *, lock: bool = False) -> HotUpdate:
    row = session.get(HotUpdate, update_id, with_for_update=lock)
    if row is None:
        raise NotFound(f"no hot update with id {update_id!r}")
    return row


def _chosen_files(row: HotUpdate, names: Sequence[str] | None) -> list[FileEntry]:
    pulled = [FileEntry.model_validate(f) for f in row.files or []]
    if names is None:
        return pulled
    if not names:
        raise InvalidChoice("choose at least one file, or leave 'files' out to push all of them")
    by_name = {f.file_name: f for f in pulled}
    unknown = sorted({n for n in names if n not in by_name})
    if unknown:
        raise InvalidChoice(f"not among the pulled files of update {row.id}: {', '.join(unknown)}")
    wanted = set(names)
    return [f for f in pulled if f.file_name in wanted]  # the pulled order, without duplicates


def _update_type(row: HotUpdate) -> UpdateType:
    return "hot_client" if row.update_type == "hot_client" else "hot_server"


def _event(model: type[E], **fields: Any) -> E:
    """Build an event, turning a validation error into an operator-facing InvalidChoice."""
    try:
        return model(**fields)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'request'}: {err['msg']}" for err in exc.errors()[:5]
        )
        raise InvalidChoice(problems) from None


def _view(session: Session, row: HotUpdate) -> UpdateView:
    results = session.scalars(
        select(TargetResult).where(TargetResult.update_id == row.id).order_by(TargetResult.kind, TargetResult.target)
    ).all()
    return UpdateView(
        id=row.id,
        parent_id=row.parent_id,
        project=row.project,
        area_name=row.area_name,
        area_code=row.area_code,
        update_type=row.update_type,
        client_type=row.client_type,
        version=row.version,
        requested_by=row.requested_by,
        push_requested_by=row.push_requested_by,
        state=row.state,
        reason=row.reason,
        final_data=row.final_data,
        files=row.files,
        chosen_files=row.chosen_files,
        rsync_targets=row.rsync_targets,
        ops_manager=row.ops_manager,
        update_targets=row.update_targets,
        narrowed=row.narrowed,
        erlang_cmd_list=list(row.erlang_cmd_list or []),
        created_at=as_utc(row.created_at),
        updated_at=as_utc(row.updated_at),
        pulled_at=as_utc(row.pulled_at),
        push_requested_at=as_utc(row.push_requested_at),
        pushed_at=as_utc(row.pushed_at),
        update_requested_at=as_utc(row.update_requested_at),
        started_at=as_utc(row.started_at),
        finished_at=as_utc(row.finished_at),
        results=[TargetView(r.kind, r.target, r.ok, r.detail, as_utc(r.reported_at)) for r in results],
    )
