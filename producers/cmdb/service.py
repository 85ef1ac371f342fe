"""What operators can do with hot updates: start, push, and control a running one (looking: producers.cmdb.reads).

Each call is one transaction. A call that publishes writes the state change and the
event into the outbox together, so a refused request publishes nothing and an accepted
one publishes exactly its event. The operator actions of issue 9 have the same shape:
load with a lock, ``require`` the state, change it, ``enqueue`` the event.

- abort → *update abort requested*; confirm → *batch confirmed* for the batch after the
  one that said ``await_confirm``.
- retry failed and rollback make a *new* update linked to the original (``parent_id``,
  ``relation``). The ops manager finds an update's files under a directory named by the
  update's id (:mod:`domain.layout`), so the new update is pulled and pushed again like
  any other; the CMDB pushes it itself once pulled (``auto_push``), with the files and
  targets fixed here: a retry pushes the original's files (same names, same md5) to
  exactly its failed or not-run servers (CDN dirs); a rollback pushes the files of the
  latest earlier *completed* update of the same project, area and type with another
  version, to the original's targets, with that update's Erlang commands.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from bus.contract.envelope import Envelope, derived_event_id
from bus.contract.events import (
    BatchConfirmed,
    Event,
    FileEntry,
    PullRequested,
    PushRequested,
    RolloutPlanV2,
    UpdateAbortRequested,
)
from bus.contract.registry import make_envelope
from bus.tracing import current_extensions
from domain.allowed import command_refusals, describe
from domain.config import HotupdateConfig
from domain.types import UpdateType
from producers.cmdb.areas import project_config, resolve_area
from producers.cmdb.database import CmdbDatabase
from producers.cmdb.errors import BadState, InvalidChoice, NotAllowed
from producers.cmdb.expected import failed_or_unrun
from producers.cmdb.models import HotUpdate, TargetResult, utcnow
from producers.cmdb.outbox import enqueue
from producers.cmdb.reads import load, view
from producers.cmdb.schemas import UpdateResponse
from producers.cmdb.states import (
    CAN_ABORT,
    CAN_CONFIRM,
    CAN_PUSH,
    CAN_RETRY_FAILED,
    CAN_ROLL_BACK,
    State,
    require,
)
from producers.cmdb.targets import require_allowed, rsync_targets, update_targets

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
    rollout: RolloutPlanV2 | None = None  # None: one batch
    update_server_list: Mapping[str, Mapping[str, Sequence[str]]] | None = None  # instead of servers


def new_envelope(event: Event, **fields: Any) -> Envelope:
    """An envelope the CMDB starts: inside an operator's request (its server span) it joins that trace."""
    return make_envelope(event, extensions=current_extensions(), **fields)


def start_update(database: CmdbDatabase, config: HotupdateConfig, cmd: StartUpdate, requested_by: str) -> str:
    """Record a new update and queue *pull requested*; returns the update id."""
    with database.transaction() as session:
        return add_update(session, config, cmd, requested_by)


def add_update(
    session: Session, config: HotupdateConfig, cmd: StartUpdate, requested_by: str, *,
    update_id: str | None = None, causationid: str | None = None, correlationid: str | None = None,
) -> str:
    """In the caller's transaction: a new update and its *pull requested* in the outbox; returns its id.

    A released version's update (:mod:`producers.cmdb.releases`) takes the announcement's update id
    and chains to it (``causationid``, ``correlationid``)."""
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
        if refused := command_refusals(erlang_cmds, proj.erlang_cmd_allowed):
            raise NotAllowed(f"{describe(refused)} (project {cmd.project!r})")
    update_id = update_id or str(uuid.uuid4())
    event = _event(
        PullRequested,
        update_type=cmd.update_type,
        version=cmd.version,
        area_name=area.name,
        client_type=cmd.client_type,
        requested_by=requested_by,
    )
    sequence = 1 if causationid else 0  # after the announcement (sequence 0) when it has one
    envelope = new_envelope(
        event, source=SOURCE, updateid=update_id, project=cmd.project, area=area.code, sequence=sequence,
        causationid=causationid, correlationid=correlationid,
    )
    now = utcnow()
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
            last_sequence=sequence,
            pull_event_id=envelope.id,
            created_at=now,
            updated_at=now,
        )
    )
    enqueue(session, envelope)
    return update_id


def push_update(
    database: CmdbDatabase, config: HotupdateConfig, update_id: str, cmd: PushUpdate, requested_by: str
) -> UpdateResponse:
    """Confirm the push of the chosen pulled files to the area's rsync targets; queue *push requested*."""
    with database.transaction() as session:
        row = load(session, update_id, lock=True)
        require(update_id, row.state, CAN_PUSH, "push")
        chosen = _chosen_files(row, cmd.files)
        proj = project_config(config, row.project)
        refs, ops_manager = rsync_targets(row.project, proj, row.area_name)
        targets = update_targets(
            row.project, proj, row.area_code, _update_type(row), servers=cmd.servers, cdn_dirs=cmd.cdn_dirs,
            update_server_list=cmd.update_server_list,
        )
        require_allowed(row.project, proj, row.area_code, targets, row.erlang_cmd_list or [])
        event = _event(
            PushRequested,
            update_type=row.update_type,
            version=row.version,
            files=chosen,
            targets=refs,
            requested_by=requested_by,
        )
        envelope = new_envelope(
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
        row.narrowed = cmd.servers is not None or cmd.cdn_dirs is not None or cmd.update_server_list is not None
        row.rollout = cmd.rollout.model_dump(mode="json") if cmd.rollout else None
        row.push_event_id = envelope.id
        row.push_requested_at = utcnow()
        enqueue(session, envelope)
        return view(session, row)


def abort_update(database: CmdbDatabase, update_id: str, requested_by: str, reason: str = "") -> UpdateResponse:
    """Ask the executor to start nothing more; queue *update abort requested*."""
    with database.transaction() as session:
        row = load(session, update_id, lock=True)
        require(update_id, row.state, CAN_ABORT, "abort")
        event = _event(UpdateAbortRequested, requested_by=requested_by, reason=reason)
        enqueue(session, _own_envelope(row, event))
        row.state = State.ABORTING
        row.reason = f"abort requested by {requested_by}" + (f": {reason}" if reason else "")
        return view(session, row)


def confirm_batch(database: CmdbDatabase, update_id: str, confirmed_by: str) -> UpdateResponse:
    """The go-ahead for the batch after the failed one; queue *batch confirmed*."""
    with database.transaction() as session:
        row = load(session, update_id, lock=True)
        require(update_id, row.state, CAN_CONFIRM, "confirm")
        last = row.last_batch or {}
        if last.get("next") != "await_confirm":  # the state says it waits; the batch must say so too
            raise BadState(f"cannot confirm update {update_id}: its latest finished batch does not await a go-ahead")
        batch = int(last["batch"]) + 1
        event = _event(BatchConfirmed, batch=batch, confirmed_by=confirmed_by)
        event_id = derived_event_id(last["event_id"], event.type_name(), secret=database.id_key)
        enqueue(session, _own_envelope(row, event, event_id=event_id))
        row.state = State.RUNNING
        row.reason = f"batch {batch} confirmed by {confirmed_by}"
        row.last_event_at = utcnow()  # the executor's silence is measured from the go-ahead
        return view(session, row)


def retry_failed(
    database: CmdbDatabase, config: HotupdateConfig, update_id: str, requested_by: str,
    rollout: RolloutPlanV2 | None = None,
) -> UpdateResponse:
    """A new update of the same version and files on exactly the failed or not-run servers (CDN dirs)."""
    with database.transaction() as session:
        parent = load(session, update_id, lock=True)
        require(update_id, parent.state, CAN_RETRY_FAILED, "retry-failed")
        results = session.scalars(select(TargetResult).where(TargetResult.update_id == parent.id)).all()
        targets = failed_or_unrun(parent, results)
        if not any(targets.values()):
            raise BadState(f"cannot retry-failed update {update_id}: no server or CDN dir failed or was left unrun")
        files = [FileEntry.model_validate(f) for f in parent.chosen_files or []]
        child = _start_linked(
            session, config, parent, relation="retry_failed", version=parent.version, files=files,
            erlang_cmd_list=list(parent.erlang_cmd_list or []), targets=targets, requested_by=requested_by,
            rollout=rollout,
        )
        return view(session, child)


def roll_back(
    database: CmdbDatabase, config: HotupdateConfig, update_id: str, requested_by: str,
    rollout: RolloutPlanV2 | None = None,
) -> UpdateResponse:
    """A new update applying the previous completed version of the same project/area/type to the same targets."""
    with database.transaction() as session:
        parent = load(session, update_id, lock=True)
        require(update_id, parent.state, CAN_ROLL_BACK, "rollback")
        previous = previous_completed(session, parent)
        if previous is None:
            raise BadState(
                f"cannot rollback update {update_id}: no earlier {parent.update_type} update of "
                f"{parent.project}/{parent.area_code} with another version than {parent.version} has completed"
            )
        files = [FileEntry.model_validate(f) for f in previous.chosen_files or []]
        child = _start_linked(
            session, config, parent, relation="rollback", version=previous.version, files=files,
            erlang_cmd_list=list(previous.erlang_cmd_list or []), targets=dict(parent.update_targets or {}),
            requested_by=requested_by, rollout=rollout,
        )
        return view(session, child)


def previous_completed(session: Session, row: HotUpdate) -> HotUpdate | None:
    """The latest completed update before ``row``: same project, area code, type (client type); another version."""
    query = (
        select(HotUpdate)
        .where(
            HotUpdate.project == row.project,
            HotUpdate.area_code == row.area_code,
            HotUpdate.update_type == row.update_type,
            HotUpdate.state == State.COMPLETED,
            HotUpdate.version != row.version,
            HotUpdate.created_at < row.created_at,
            HotUpdate.id != row.id,
        )
        .order_by(HotUpdate.finished_at.desc(), HotUpdate.created_at.desc())
    )
    if row.update_type == "hot_client":
        query = query.where(HotUpdate.client_type == row.client_type)
    return session.scalars(query.limit(1)).first()


def _start_linked(
    session: Session,
    config: HotupdateConfig,
    parent: HotUpdate,
    *,
    relation: str,
    version: str,
    files: list[FileEntry],
    erlang_cmd_list: list[str],
    targets: dict[str, Any],
    requested_by: str,
    rollout: RolloutPlanV2 | None,
) -> HotUpdate:
    """Record the linked update and queue its *pull requested*; the process manager pushes it once pulled."""
    if not files:
        raise BadState(f"update {parent.id} pushed no files to repeat")
    proj = project_config(config, parent.project)
    require_allowed(parent.project, proj, parent.area_code, targets, erlang_cmd_list)
    refs, ops_manager = rsync_targets(parent.project, proj, parent.area_name)
    update_id = str(uuid.uuid4())
    pull = _event(
        PullRequested, update_type=parent.update_type, version=version, area_name=parent.area_name,
        client_type=parent.client_type, requested_by=requested_by,
    )
    envelope = new_envelope(
        pull, source=SOURCE, updateid=update_id, project=parent.project, area=parent.area_code, sequence=0
    )
    now = utcnow()
    child = HotUpdate(
        id=update_id,
        parent_id=parent.id,
        relation=relation,
        project=parent.project,
        area_name=parent.area_name,
        area_code=parent.area_code,
        update_type=parent.update_type,
        client_type=parent.client_type,
        version=version,
        requested_by=requested_by,
        state=State.PULL_REQUESTED,
        erlang_cmd_list=erlang_cmd_list,
        rsync_targets=[t.model_dump(mode="json") for t in refs],
        ops_manager=ops_manager,
        update_targets=targets,
        narrowed=True,
        rollout=rollout.model_dump(mode="json") if rollout else None,
        auto_push={"files": [f.file_name for f in files], "md5": {f.file_name: f.file_md5 for f in files}},
        last_sequence=0,
        pull_event_id=envelope.id,
        created_at=now,
        updated_at=now,
    )
    session.add(child)
    session.flush()  # the parent link must exist before the outbox row refers to the update
    enqueue(session, envelope)
    return child


def _own_envelope(row: HotUpdate, event: Event, *, event_id: str | None = None) -> Envelope:
    """An event the CMDB adds to a requested update's chain (caused by its *update requested*)."""
    return new_envelope(
        event, source=SOURCE, updateid=row.id, project=row.project, area=row.area_code,
        sequence=row.next_sequence(), causationid=row.update_event_id, event_id=event_id,
    )


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
