"""The CMDB's process manager: one handler per event it reacts to, each one transaction.

A handler loads the update with a lock, checks that the event is the one the update is
waiting for (a redelivered or stale event changes nothing), records the fact and, when
the flow goes on, queues the next event in the outbox in the same transaction. Events
the CMDB causes get ids derived from their cause, so a handler re-run after a crash
queues the same id, which the outbox skips.

The pull, push and execution steps map onto states like this::

    pull_requested ─ FilesPulled → pulled ─ (operator pushes) → push_requested
                   └ PullFailed  → pull_failed                  ├ FilesPushed → update_requested (+ UpdateRequested)
                                                                └ PushFailed  → push_failed
    update_requested ─ UpdateStarted / IpFinished / CdnDirFinished → running
                     └ UpdateCompleted → completed | failed
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from typing import Any

from pydantic import ValidationError
from sqlalchemy.orm import Session

from bus.events import (
    CdnDirFinished,
    Event,
    FileEntry,
    FilesPulled,
    FilesPushed,
    IpFinished,
    PullFailed,
    PushFailed,
    UpdateCompleted,
    UpdateRequested,
    UpdateStarted,
)
from bus.handling import Incoming, child_envelope
from producers.cmdb.database import CmdbDatabase
from producers.cmdb.models import HotUpdate, TargetResult, utcnow
from producers.cmdb.outbox import enqueue
from producers.cmdb.service import SOURCE
from producers.cmdb.states import AWAITING_EXECUTION, AWAITING_PULL, AWAITING_PUSH, State

log = logging.getLogger(__name__)

# Results may still arrive after the completion event (a retried delivery overtakes nothing).
_REPORTABLE = frozenset({*AWAITING_EXECUTION, State.COMPLETED, State.FAILED})


def on_files_pulled(msg: Incoming[FilesPulled], database: CmdbDatabase) -> None:
    """Record the pulled file list: the operator can now choose files and push."""
    with database.transaction() as session:
        row = _waiting(session, msg, AWAITING_PULL, cause="pull_event_id")
        if row is None:
            return
        row.files = [f.model_dump(mode="json") for f in msg.event.files]
        row.backup_dir = msg.event.backup_dir
        row.state = State.PULLED
        row.pulled_at = utcnow()
        row.pulled_event_id = msg.envelope.id


def on_pull_failed(msg: Incoming[PullFailed], database: CmdbDatabase) -> None:
    """Stop the update: the version's files could not be pulled."""
    with database.transaction() as session:
        row = _waiting(session, msg, AWAITING_PULL, cause="pull_event_id")
        if row is None:
            return
        row.state = State.PULL_FAILED
        row.reason = f"pull failed ({msg.event.reason}): {msg.event.detail}"
        row.finished_at = utcnow()


def on_files_pushed(msg: Incoming[FilesPushed], database: CmdbDatabase) -> None:
    """Every target has the files: queue *update requested* for the ops manager."""
    with database.transaction() as session:
        row = _waiting(session, msg, AWAITING_PUSH, cause="push_event_id")
        if row is None:
            return
        row.pushed_at = utcnow()
        try:
            request = update_request(row)
        except ValidationError as exc:  # the stored choices no longer make a valid request
            row.state = State.FAILED
            row.reason = f"cannot request the update: {exc.errors()[0]['msg']}"
            row.finished_at = utcnow()
            return
        envelope = child_envelope(msg.envelope, request, source=SOURCE, offset=1)
        row.state = State.UPDATE_REQUESTED
        row.update_event_id = envelope.id
        row.update_requested_at = utcnow()
        row.saw_sequence(envelope.sequence)
        enqueue(session, envelope)


def on_push_failed(msg: Incoming[PushFailed], database: CmdbDatabase) -> None:
    """Stop the update: a target did not get the files. The operator may push again."""
    with database.transaction() as session:
        row = _waiting(session, msg, AWAITING_PUSH, cause="push_event_id")
        if row is None:
            return
        errors = [f"{t.name}: {t.error}" for t in msg.event.targets if not t.ok and t.error]
        row.state = State.PUSH_FAILED
        row.reason = "; ".join(
            [msg.event.reason, f"failed targets: {', '.join(msg.event.failed_targets) or '-'}", *errors]
        )


def on_update_started(msg: Incoming[UpdateStarted], database: CmdbDatabase) -> None:
    """The ops manager started the update."""
    with database.transaction() as session:
        row = _waiting(session, msg, AWAITING_EXECUTION)
        if row is None:
            return
        _mark_running(row)


def on_ip_finished(msg: Incoming[IpFinished], database: CmdbDatabase) -> None:
    """Record one IP's servers' results (the seed's per-IP callback)."""
    event = msg.event
    ok = all(r.status for r in (*event.update_data.values(), *event.erl_data.values()))
    detail = {
        "group": event.group,
        "update_data": {k: v.model_dump() for k, v in event.update_data.items()},
        "erl_data": {k: v.model_dump() for k, v in event.erl_data.items()},
    }
    _record_result(msg, database, kind="ip", target=event.ip, ok=ok, detail=detail)


def on_cdn_dir_finished(msg: Incoming[CdnDirFinished], database: CmdbDatabase) -> None:
    """Record one CDN dir's result."""
    event = msg.event
    detail = {"cdn_root_url": event.cdn_root_url, "cdn_dir": event.cdn_dir, "data": event.data}
    target = f"{event.cdn_root_url}/{event.cdn_dir}"
    _record_result(msg, database, kind="cdn_dir", target=target, ok=event.status, detail=detail)


def on_update_completed(msg: Incoming[UpdateCompleted], database: CmdbDatabase) -> None:
    """The update is over: completed when everything succeeded, else failed with the executor's words."""
    with database.transaction() as session:
        row = _waiting(session, msg, AWAITING_EXECUTION)
        if row is None:
            return
        event = msg.event
        row.final_data = event.final_data
        row.finished_at = utcnow()
        if event.final_result:
            row.state = State.COMPLETED
        else:
            row.state = State.FAILED
            counts = f" ({event.failed_count} failed, {event.ok_count} ok)" if event.failed_count else ""
            not_run = f"; not run: {', '.join(event.not_run)}" if event.not_run else ""
            outcome = "" if event.outcome == "failed" else f"{event.outcome}: "
            row.reason = f"{outcome}{event.final_data}{counts}{not_run}"


def update_request(row: HotUpdate) -> UpdateRequested:
    """The seed's CMDB → ops manager request, from what the operator started and confirmed."""
    targets = row.update_targets or {}
    common: dict[str, Any] = {
        "update_type": row.update_type,
        "version": row.version,
        "ops_manager": row.ops_manager or "",
        "update_file_list": [FileEntry.model_validate(f) for f in row.chosen_files or []],
        "requested_by": row.push_requested_by or row.requested_by,
    }
    if row.update_type == "hot_client":
        return UpdateRequested(**common, client_type=row.client_type, data=targets.get("data"))
    return UpdateRequested(
        **common, update_server_list=targets.get("update_server_list"), erlang_cmd_list=list(row.erlang_cmd_list)
    )


def _record_result(
    msg: Incoming[Event], database: CmdbDatabase, *, kind: str, target: str, ok: bool, detail: dict[str, Any]
) -> None:
    with database.transaction() as session:
        row = _waiting(session, msg, _REPORTABLE)
        if row is None:
            return
        if session.get(TargetResult, (row.id, kind, target)) is not None:
            log.info("update %s: %s %s already reported; %s ignored", row.id, kind, target, msg.envelope.id)
            return
        session.add(
            TargetResult(
                update_id=row.id, kind=kind, target=target, ok=ok, detail=detail,
                event_id=msg.envelope.id, reported_at=utcnow(),
            )
        )
        if row.state == State.UPDATE_REQUESTED:  # the started event may still be on its way
            _mark_running(row)


def _mark_running(row: HotUpdate) -> None:
    if row.state == State.UPDATE_REQUESTED:
        row.state = State.RUNNING
        row.started_at = utcnow()


def _waiting(
    session: Session, msg: Incoming[Event], allowed: Collection[State], *, cause: str | None = None
) -> HotUpdate | None:
    """The update this event is for, locked, if it is waiting for it; None (logged) otherwise."""
    env = msg.envelope
    row = session.get(HotUpdate, env.updateid, with_for_update=True)
    if row is None:
        log.warning("%s %s is for unknown update %s; ignored", env.type, env.id, env.updateid)
        return None
    if row.state not in allowed:
        log.info("%s %s: update %s is %s; nothing to do", env.type, env.id, row.id, row.state)
        return None
    if cause is not None and env.causationid != getattr(row, cause):
        # An answer to an earlier request (a push the operator has since repeated).
        log.info("%s %s answers %s, not the current request of update %s; ignored",
                 env.type, env.id, env.causationid, row.id)
        return None
    row.saw_sequence(env.sequence)
    return row


PmHandler = Callable[[Incoming[Any], CmdbDatabase], None]

HANDLERS: dict[type[Event], PmHandler] = {
    FilesPulled: on_files_pulled,
    PullFailed: on_pull_failed,
    FilesPushed: on_files_pushed,
    PushFailed: on_push_failed,
    UpdateStarted: on_update_started,
    IpFinished: on_ip_finished,
    CdnDirFinished: on_cdn_dir_finished,
    UpdateCompleted: on_update_completed,
}
"""What the CMDB reacts to: the consumer's bindings and handler table are built from this."""
