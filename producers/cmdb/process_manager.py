"""The CMDB's process manager: one handler per event it reacts to, each one transaction.

A handler loads the update with a lock, checks that the event is the one the update is
waiting for (a redelivered or stale event changes nothing), records the fact and, when
the flow goes on, queues the next event in the outbox in the same transaction. An event
that does not chain back to a request the CMDB itself sent for the update is refused
(:class:`bus.consumer.Reject`: parked with the reason, the update untouched); who may send
it at all is checked before (:mod:`producers.cmdb.senders`). Events
the CMDB causes get ids derived from their cause, so a handler re-run after a crash
queues the same id, which the outbox skips.

The pull, push and execution steps map onto states like this::

    pull_requested ─ FilesPulled → pulled ─ (operator pushes) → push_requested
                   └ PullFailed  → pull_failed                  ├ FilesPushed → update_requested (+ UpdateRequested)
                                                                └ PushFailed  → push_failed
    update_requested ─ UpdateStarted / IpFinished / CdnDirFinished / BatchFinished → running
    running ─ BatchFinished(next=await_confirm) → awaiting_confirm ─ (operator confirms) → running
    update_requested | running | awaiting_confirm ─ (operator aborts) → aborting
    … ─ UpdateCompleted → completed | failed | stopped | aborted (by its outcome), or
                          finishing while an expected target's result is still missing; the
                          last result then moves it to the outcome's state.

A retry or rollback (``auto_push`` set) is pushed by the CMDB itself once pulled: its files
and targets were fixed when the operator asked for it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from bus.consumer import Reject
from bus.contract.envelope import Envelope
from bus.contract.events import (
    AnalysisVerdict,
    BatchFinished,
    CdnDirFinished,
    Event,
    FileEntry,
    FilesPulled,
    FilesPushed,
    IpFinished,
    PullFailed,
    PullRequested,
    PushFailed,
    PushRequested,
    ReleaseAnnounced,
    RolloutPlanV2,
    RsyncTargetRef,
    UpdateCompleted,
    UpdateRequested,
    UpdateStarted,
)
from bus.contract.registry import DEFAULT_REGISTRY
from bus.handling import Incoming, child_envelope
from producers.cmdb.analysis import on_analysis_verdict
from producers.cmdb.database import CmdbDatabase
from producers.cmdb.expected import cdn_target_name, ip_target_name, missing_targets
from producers.cmdb.models import HotUpdate, OutboxMessage, TargetResult, utcnow
from producers.cmdb.outbox import enqueue
from producers.cmdb.releases import on_release_announced
from producers.cmdb.service import SOURCE
from producers.cmdb.states import AWAITING_EXECUTION, AWAITING_PULL, AWAITING_PUSH, ENDED, State

log = logging.getLogger(__name__)

# Results may still arrive after the completion event (a retried delivery overtakes nothing).
_REPORTABLE = frozenset({*AWAITING_EXECUTION, State.FINISHING, *ENDED})

_STATE_OF_OUTCOME: dict[str, State] = {
    "succeeded": State.COMPLETED, "failed": State.FAILED, "stopped": State.STOPPED, "aborted": State.ABORTED,
}


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
        if row.auto_push is not None:
            _push_automatically(session, msg, row, database.id_key)


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
        envelope = child_envelope(msg.envelope, request, source=SOURCE, offset=1, id_key=database.id_key)
        row.state = State.UPDATE_REQUESTED
        row.update_event_id = envelope.id
        row.update_requested_at = utcnow()
        row.last_event_at = row.update_requested_at  # the executor's silence is measured from here
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
    _record_result(msg, database, kind="ip", target=(event.ip, event.group), ok=ok, detail=detail)


def on_cdn_dir_finished(msg: Incoming[CdnDirFinished], database: CmdbDatabase) -> None:
    """Record one CDN dir's result."""
    event = msg.event
    detail = {"cdn_root_url": event.cdn_root_url, "cdn_dir": event.cdn_dir, "data": event.data}
    target = cdn_target_name(event.cdn_root_url, event.cdn_dir)
    _record_result(msg, database, kind="cdn_dir", target=target, ok=event.status, detail=detail)


def on_batch_finished(msg: Incoming[BatchFinished], database: CmdbDatabase) -> None:
    """Record the latest batch; a failed batch under ``on_failure: confirm`` waits for the operator."""
    with database.transaction() as session:
        row = _waiting(session, msg, _REPORTABLE)  # handled concurrently: it may come after the completion
        if row is None:
            return
        event = msg.event
        if row.last_batch is not None and event.batch <= int(row.last_batch["batch"]):
            log.info("update %s: batch %d already recorded; %s ignored", row.id, event.batch, msg.envelope.id)
            return
        row.last_batch = {
            "batch": event.batch, "batches": event.batches, "next": event.next,
            "ok_count": event.ok_count, "failed_count": event.failed_count, "event_id": msg.envelope.id,
        }
        _mark_running(row)
        if event.next == "await_analysis":
            row.reason = (f"batch {event.batch} of {event.batches} finished: waiting for an analysis verdict "
                          f"before batch {event.batch + 1}")
        if event.next == "await_confirm" and row.state == State.RUNNING:
            row.state = State.AWAITING_CONFIRM
            row.reason = (f"batch {event.batch} of {event.batches} failed ({event.failed_count} failed, "
                          f"{event.ok_count} ok): confirm to run batch {event.batch + 1}, or abort")


def on_update_completed(msg: Incoming[UpdateCompleted], database: CmdbDatabase) -> None:
    """The executor is done: the update ends by its outcome once every expected target's result is in."""
    with database.transaction() as session:
        row = _waiting(session, msg, AWAITING_EXECUTION)
        if row is None:
            return
        event = msg.event
        row.final_data = event.final_data
        row.outcome = event.outcome
        row.not_run = list(event.not_run)
        counts = f" ({event.failed_count} failed, {event.ok_count} ok)" if event.failed_count else ""
        not_run = f"; not run: {', '.join(event.not_run)}" if event.not_run else ""
        outcome = "" if event.outcome in ("failed", "succeeded") else f"{event.outcome}: "
        row.completion_reason = None if event.final_result else f"{outcome}{event.final_data}{counts}{not_run}"
        refused = not event.final_result and not (event.ok_count or event.failed_count or event.not_run)
        missing = [] if refused else missing_targets(row, _reported(session, row))
        if missing:
            _await_results(row, missing)
        else:
            _finish(row)


def _await_results(row: HotUpdate, missing: list[str]) -> None:
    """The completion is in, some results are not: say which, instead of claiming the outcome."""
    row.state = State.FINISHING
    row.reason = (f"completion ({row.outcome}) received, but no result yet from "
                  f"{len(missing)} target(s): {', '.join(missing)}")


def _finish(row: HotUpdate) -> None:
    row.state = _STATE_OF_OUTCOME.get(row.outcome or "failed", State.FAILED)
    row.reason = row.completion_reason
    row.finished_at = utcnow()


def _reported(session: Session, row: HotUpdate) -> set[str]:
    return set(session.scalars(select(TargetResult.target).where(TargetResult.update_id == row.id)).all())


def _push_automatically(
    session: Session, msg: Incoming[FilesPulled], row: HotUpdate, id_key: bytes | None
) -> None:
    """A retry or rollback: push the files fixed when the operator asked for it, if the pull still has them."""
    plan = row.auto_push or {}
    pulled = {f.file_name: f for f in msg.event.files}
    names: list[str] = list(plan.get("files") or [])
    absent = [n for n in names if n not in pulled]
    md5: dict[str, str] = plan.get("md5") or {}
    changed = [n for n in names if n in pulled and n in md5 and pulled[n].file_md5 != md5[n]]
    if absent or changed or not names:
        why = "; ".join(filter(None, [
            f"the version no longer has {', '.join(absent)}" if absent else "",
            f"the version's {', '.join(changed)} changed since" if changed else "",
            "no file to push" if not names else "",
        ]))
        row.reason = f"not pushed automatically: {why}; choose the files and push by hand"
        return
    push = PushRequested(
        update_type=row.update_type,
        version=row.version,
        files=[pulled[n] for n in names],
        targets=[RsyncTargetRef.model_validate(t) for t in row.rsync_targets or []],
        requested_by=row.requested_by,
    )
    envelope = child_envelope(msg.envelope, push, source=SOURCE, offset=1, id_key=id_key)
    row.state = State.PUSH_REQUESTED
    row.push_requested_by = row.requested_by
    row.chosen_files = [pulled[n].model_dump(mode="json") for n in names]
    row.push_event_id = envelope.id
    row.push_requested_at = utcnow()
    row.saw_sequence(envelope.sequence)
    enqueue(session, envelope)


def update_request(row: HotUpdate) -> UpdateRequested:
    """The seed's CMDB → ops manager request, from what the operator started and confirmed."""
    targets = row.update_targets or {}
    common: dict[str, Any] = {
        "update_type": row.update_type,
        "version": row.version,
        "ops_manager": row.ops_manager or "",
        "update_file_list": [FileEntry.model_validate(f) for f in row.chosen_files or []],
        "requested_by": row.push_requested_by or row.requested_by,
        "rollout": RolloutPlanV2.model_validate(row.rollout) if row.rollout else None,
        "parent_id": row.parent_id if row.relation else None,
        "relation": row.relation,
    }
    if row.update_type == "hot_client":
        return UpdateRequested(**common, client_type=row.client_type, data=targets.get("data"))
    return UpdateRequested(
        **common, update_server_list=targets.get("update_server_list"), erlang_cmd_list=list(row.erlang_cmd_list)
    )


def _record_result(
    msg: Incoming[Event],
    database: CmdbDatabase,
    *,
    kind: str,
    target: str | tuple[str, str],
    ok: bool,
    detail: dict[str, Any],
) -> None:
    with database.transaction() as session:
        row = _waiting(session, msg, _REPORTABLE)
        if row is None:
            return
        if isinstance(target, tuple):  # (ip, group): named as the executor keys it
            server_list = (row.update_targets or {}).get("update_server_list") or {}
            target = ip_target_name(server_list, *target)
        if session.get(TargetResult, (row.id, kind, target)) is not None:
            log.info("update %s: %s %s already reported; %s ignored", row.id, kind, target, msg.envelope.id)
            return
        session.add(
            TargetResult(
                update_id=row.id, kind=kind, target=target, ok=ok, detail=detail,
                event_id=msg.envelope.id, reported_at=utcnow(),
            )
        )
        session.flush()
        if row.state == State.UPDATE_REQUESTED:  # the started event may still be on its way
            _mark_running(row)
        elif row.state == State.FINISHING:
            missing = missing_targets(row, _reported(session, row))
            if missing:
                _await_results(row, missing)
            else:
                _finish(row)


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
    problem = _chain_problem(session, row, env, cause)
    if problem is not None:  # not an answer to anything the CMDB asked: parked, the update untouched
        raise Reject(problem)
    if row.state not in allowed:
        log.info("%s %s: update %s is %s; nothing to do", env.type, env.id, row.id, row.state)
        return None
    if cause is not None and env.causationid != getattr(row, cause):
        # An answer to an earlier request of the CMDB's own (a push the operator has since repeated).
        log.info("%s %s answers %s, not the current request of update %s; ignored",
                 env.type, env.id, env.causationid, row.id)
        return None
    row.saw_sequence(env.sequence)
    row.last_event_at = utcnow()
    return row


# The request each kind of report answers: the row's column holding the current one, and its types
# (every version: a request queued before an upgrade is still one the CMDB sent).
_REQUEST_OF_CAUSE = {
    "pull_event_id": ("pull requested", DEFAULT_REGISTRY.type_names_of(PullRequested.event_name)),
    "push_event_id": ("push requested", DEFAULT_REGISTRY.type_names_of(PushRequested.event_name)),
    "update_event_id": ("update requested", DEFAULT_REGISTRY.type_names_of(UpdateRequested.event_name)),
}


def _chain_problem(session: Session, row: HotUpdate, env: Envelope, cause: str | None) -> str | None:
    """None if ``env`` chains back to a request the CMDB itself emitted for ``row``, else why not.

    The update's chain is its correlation id (the update id, set on the CMDB's first event and
    carried by every child); the cause must be the CMDB's current request of that step, or an
    earlier one of the same type it queued for this update (found in its outbox: a repeated push).
    """
    if env.correlationid != row.id:
        return (f"chain: {env.type} {env.id} names update {row.id} but is not in its chain "
                f"(correlationid {env.correlationid!r})")
    column = cause or "update_event_id"
    what, request_types = _REQUEST_OF_CAUSE[column]
    if env.causationid is not None and env.causationid == getattr(row, column):
        return None
    earlier = env.causationid is not None and session.scalar(
        select(OutboxMessage.id).where(
            OutboxMessage.event_id == env.causationid, OutboxMessage.update_id == row.id,
            OutboxMessage.event_type.in_(request_types),
        )
    )
    if earlier:
        return None
    return (f"chain: {env.type} {env.id} does not answer a {what} the CMDB sent for update {row.id} "
            f"(causationid {env.causationid!r})")


HANDLERS: dict[type[Event], Callable[..., None]] = {
    FilesPulled: on_files_pulled,
    PullFailed: on_pull_failed,
    FilesPushed: on_files_pushed,
    PushFailed: on_push_failed,
    UpdateStarted: on_update_started,
    IpFinished: on_ip_finished,
    CdnDirFinished: on_cdn_dir_finished,
    BatchFinished: on_batch_finished,
    UpdateCompleted: on_update_completed,
    ReleaseAnnounced: on_release_announced,
    AnalysisVerdict: on_analysis_verdict,
}
"""What the CMDB reacts to: its queue's bindings come from this table, and its composition root
binds each handler's dependencies by name (bus/wiring.py) and runs it off the event loop."""
