"""Reading the status view: the list of updates, one update's detail, the rejected messages, the live state."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from datetime import UTC, datetime, time, timedelta
from typing import Any

from sqlalchemy import and_, case, func, select
from sqlalchemy.orm import Session

from projections.log import HEAD_ID
from projections.models import (
    AppliedEvent,
    BatchRow,
    CdnDirRow,
    FileRow,
    IpRow,
    LoggedEvent,
    LogHead,
    RejectedEvent,
    RsyncTargetRow,
    ServerRow,
    UpdateRow,
    as_utc,
)
from projections.schemas import (
    BatchStatus,
    CdnDirStatus,
    Counts,
    FileStatus,
    IpStatus,
    LiveChange,
    LiveState,
    LoggedEventOut,
    RejectedOut,
    RejectedPage,
    RsyncTargetStatus,
    ServerStatus,
    StageStep,
    TargetCounts,
    UpdateDetail,
    UpdateFilters,
    UpdatePage,
    UpdateSummary,
)
from projections.view import OPTIONAL_STAGES, STAGE_FIELDS

_CHANGED_LIMIT = 200


def _utc(value: datetime | None) -> datetime | None:
    return as_utc(value)


def _must_utc(value: datetime) -> datetime:
    converted = as_utc(value)
    assert converted is not None
    return converted


_SUMMARY_COLUMNS = tuple(
    getattr(UpdateRow, name) for name in (
        "updateid", "project", "area", "update_type", "version", "stage", "status", "requested_by", "final_result",
        "final_data", "first_event_at", "last_event_at", "completed_at", "event_count",
        "servers_expected", "servers_ok", "servers_failed", "servers_pending", "servers_not_run",
        "ips_expected", "ips_ok", "ips_failed", "ips_pending", "ips_not_run",
        "cdn_dirs_expected", "cdn_dirs_ok", "cdn_dirs_failed", "cdn_dirs_pending", "cdn_dirs_not_run",
        "targets_requested", "targets_ok", "targets_failed", "files_count",
    )
)
"""What :func:`_summary_fields` reads: a list selects only these (not the detail's JSON columns)."""


def _summary_fields(u: Any) -> dict[str, Any]:
    """``u``: an :class:`UpdateRow` or a row of :data:`_SUMMARY_COLUMNS`."""
    return {
        "updateid": u.updateid,
        "project": u.project,
        "area": u.area,
        "update_type": u.update_type,
        "version": u.version,
        "stage": u.stage,
        "status": u.status,
        "requested_by": u.requested_by,
        "final_result": u.final_result,
        "final_data": u.final_data,
        "first_event_at": _must_utc(u.first_event_at),
        "last_event_at": _must_utc(u.last_event_at),
        "completed_at": _utc(u.completed_at),
        "event_count": u.event_count,
        "servers": Counts(expected=u.servers_expected, ok=u.servers_ok, failed=u.servers_failed,
                          pending=u.servers_pending, not_run=u.servers_not_run),
        "ips": Counts(expected=u.ips_expected, ok=u.ips_ok, failed=u.ips_failed, pending=u.ips_pending,
                      not_run=u.ips_not_run),
        "cdn_dirs": Counts(expected=u.cdn_dirs_expected, ok=u.cdn_dirs_ok, failed=u.cdn_dirs_failed,
                           pending=u.cdn_dirs_pending, not_run=u.cdn_dirs_not_run),
        "rsync_targets": TargetCounts(requested=u.targets_requested, ok=u.targets_ok, failed=u.targets_failed),
        "files_count": u.files_count,
    }


def list_updates(session: Session, filters: UpdateFilters) -> UpdatePage:
    """Updates matching ``filters``, most recently active first, one page of them."""
    conditions = []
    if filters.project:
        conditions.append(UpdateRow.project == filters.project)
    if filters.area:
        conditions.append(UpdateRow.area == filters.area)
    if filters.type:
        conditions.append(UpdateRow.update_type == filters.type)
    if filters.status:
        conditions.append(UpdateRow.status == filters.status)
    if filters.date_from:
        conditions.append(UpdateRow.first_event_at >= datetime.combine(filters.date_from, time(0), UTC))
    if filters.date_to:
        day_after = filters.date_to + timedelta(days=1)
        conditions.append(UpdateRow.first_event_at < datetime.combine(day_after, time(0), UTC))
    total = session.execute(select(func.count()).select_from(UpdateRow).where(*conditions)).scalar_one()
    order = (UpdateRow.last_event_at.desc(), UpdateRow.updateid)
    # The page's ids first, then their rows: the database sorts narrow (time, id) pairs instead of
    # whole rows (a filter matching thousands of updates sorted them all, row by row).
    page_ids = (
        select(UpdateRow.updateid).where(*conditions).order_by(*order)
        .offset((filters.page - 1) * filters.page_size).limit(filters.page_size)
    ).scalar_subquery()
    rows = session.execute(select(*_SUMMARY_COLUMNS).where(UpdateRow.updateid.in_(page_ids)).order_by(*order)).all()
    return UpdatePage(
        items=[UpdateSummary(**_summary_fields(u)) for u in rows],
        total=total,
        page=filters.page,
        page_size=filters.page_size,
        pages=max(1, math.ceil(total / filters.page_size)),
        filters=filters,
    )


def facets(session: Session) -> dict[str, list[str]]:
    """The projects and areas present, for the list page's filter choices."""
    projects = session.scalars(select(UpdateRow.project).distinct().order_by(UpdateRow.project)).all()
    areas = session.scalars(select(UpdateRow.area).distinct().order_by(UpdateRow.area)).all()
    return {"projects": list(projects), "areas": list(areas)}


def _timeline(u: UpdateRow) -> list[StageStep]:
    steps = []
    for stage, column, label in STAGE_FIELDS:
        at = _utc(getattr(u, column))
        reached = at is not None or (stage == "started" and u.stage in ("started", "completed"))
        if stage in OPTIONAL_STAGES and not reached:
            continue  # a failure that did not happen is not a step
        failed = reached and (
            stage in ("pull_failed", "push_failed", "abort_requested") or (stage == "completed" and not u.final_result)
        )
        steps.append(StageStep(stage=stage, label=label, at=at, reached=reached, failed=failed))
    return steps


def _server_rank(row: Any, not_run_ips: set[str]) -> int:
    """Failed first, then silent, then never started, then ok: what an operator has to look at comes first."""
    if row.reported and row.ok is False:
        return 0
    if not row.reported:
        return 2 if row.ip in not_run_ips else 1
    return 3


def _server_page(session: Session, updateid: str, not_run_ips: set[str], offset: int, limit: int | None
                 ) -> tuple[list[Any], int]:
    """One page of an update's servers in the detail's order (failed first), and how many there are.

    A page comes back as plain rows (named like :class:`ServerRow`'s attributes): building ORM
    instances for them cost more than the query.

    The database sorts and pages (an update of 10,000 servers would otherwise build 10,000 rows
    per request), by the same rank as :func:`_server_rank`, then IP and name in code-point order
    (PostgreSQL's "C" collation; SQLite's default compares that way already).
    """
    total = int(session.execute(
        select(func.count()).select_from(ServerRow).where(ServerRow.updateid == updateid)).scalar_one())
    if limit is None:
        servers = session.scalars(select(ServerRow).where(ServerRow.updateid == updateid)).all()
        return sorted(servers, key=lambda r: (_server_rank(r, not_run_ips), r.ip, r.server))[offset:], total
    whens: list[tuple[Any, int]] = [(and_(ServerRow.reported.is_(True), ServerRow.ok.is_(False)), 0)]
    if not_run_ips:
        # Only a stopped or aborted update has IPs that never ran; everyone else skips this test
        # (a correlated lookup per server row was most of the detail's query time).
        ip_not_run = (
            select(IpRow.ip)
            .where(IpRow.updateid == updateid, IpRow.ip == ServerRow.ip, IpRow.not_run.is_(True))
            .exists()
        )
        whens.append((and_(ServerRow.reported.is_(False), ip_not_run), 2))
    whens.append((ServerRow.reported.is_(False), 1))
    rank = case(*whens, else_=3)
    ip_col, server_col = _code_point(session, ServerRow.ip), _code_point(session, ServerRow.server)
    page = session.execute(
        select(*ServerRow.__table__.c).where(ServerRow.updateid == updateid)
        .order_by(rank, ip_col, server_col).offset(offset).limit(limit)
    ).all()
    return list(page), total


def _code_point(session: Session, column: Any) -> Any:
    """``column`` ordered by code point on PostgreSQL ("C" collation), as SQLite orders it already."""
    if session.get_bind().dialect.name == "postgresql":
        return column.collate("C")
    return column


def _ip_rank(row: Any) -> int:
    """Failed first, then silent, then never started, then ok (the servers' order, per IP)."""
    return 0 if row.ok is False else 3 if row.reported else 2 if row.not_run else 1


def _ip_page(session: Session, updateid: str, offset: int, limit: int | None) -> tuple[list[Any], int]:
    """One page of an update's IPs in the detail's order (failed first, by :func:`_ip_rank`, then IP),
    and how many there are; all of them from ``offset`` when ``limit`` is None."""
    total = int(session.execute(
        select(func.count()).select_from(IpRow).where(IpRow.updateid == updateid)).scalar_one())
    if limit is None:
        ips = session.scalars(select(IpRow).where(IpRow.updateid == updateid)).all()
        return sorted(ips, key=lambda r: (_ip_rank(r), r.ip))[offset:], total
    rank = case(
        (IpRow.ok.is_(False), 0),
        (IpRow.reported.is_(True), 3),
        (IpRow.not_run.is_(True), 2),
        else_=1,
    )
    rows = session.execute(
        select(*IpRow.__table__.c).where(IpRow.updateid == updateid)
        .order_by(rank, _code_point(session, IpRow.ip)).offset(offset).limit(limit)
    ).all()
    return list(rows), total


def update_detail(session: Session, updateid: str, *, events_limit: int = 1000, servers_offset: int = 0,
                  servers_limit: int | None = None, ips_offset: int = 0, ips_limit: int | None = None
                  ) -> UpdateDetail | None:
    """One update's detail; ``servers_limit`` servers from ``servers_offset`` and ``ips_limit`` IPs from
    ``ips_offset``, each in the failed-first order (all of them when the limit is None)."""
    u = session.get(UpdateRow, updateid)
    if u is None:
        return None
    ips, ips_total = _ip_page(session, updateid, ips_offset, ips_limit)
    not_run_ips = set(session.scalars(
        select(IpRow.ip).where(IpRow.updateid == updateid, IpRow.not_run.is_(True))).all())
    servers, servers_total = _server_page(session, updateid, not_run_ips, servers_offset, servers_limit)
    cdn = session.scalars(
        select(CdnDirRow).where(CdnDirRow.updateid == updateid).order_by(CdnDirRow.cdn_root_url, CdnDirRow.cdn_dir)
    ).all()
    cdn = sorted(cdn, key=lambda r: 0 if r.status is False else 3 if r.status else 2 if r.not_run else 1)
    targets = session.scalars(
        select(RsyncTargetRow).where(RsyncTargetRow.updateid == updateid).order_by(RsyncTargetRow.name)
    ).all()
    files = session.scalars(select(FileRow).where(FileRow.updateid == updateid).order_by(FileRow.file_name)).all()
    events_total = session.execute(
        select(func.count()).select_from(LoggedEvent).where(LoggedEvent.updateid == updateid)
    ).scalar_one()
    logged = session.execute(
        select(*LoggedEvent.__table__.c, AppliedEvent.event_id.label("applied_id"))
        .outerjoin(AppliedEvent, AppliedEvent.event_id == LoggedEvent.event_id)
        .where(LoggedEvent.updateid == updateid)
        .order_by(LoggedEvent.position)
        .limit(events_limit)
    ).all()
    rejected = session.scalars(
        select(RejectedEvent).where(RejectedEvent.updateid == updateid).order_by(RejectedEvent.id)
    ).all()
    batches = session.scalars(select(BatchRow).where(BatchRow.updateid == updateid).order_by(BatchRow.batch)).all()
    children = session.execute(
        select(*_SUMMARY_COLUMNS).where(UpdateRow.parent_updateid == updateid).order_by(UpdateRow.first_event_at)
    ).all()
    return UpdateDetail(
        **_summary_fields(u),
        area_name=u.area_name,
        client_type=u.client_type,
        ops_manager=u.ops_manager,
        erlang_cmd_list=list(u.erlang_cmd_list or []),
        pull_requested_by=u.pull_requested_by,
        push_requested_by=u.push_requested_by,
        update_requested_by=u.update_requested_by,
        pull_requested_source=u.pull_requested_source,
        update_requested_source=u.update_requested_source,
        source_dir=u.source_dir,
        backup_dir=u.backup_dir,
        total_bytes=u.total_bytes,
        pull_failure=u.pull_failure,
        push_failure=u.push_failure,
        completed_ok_count=u.completed_ok_count,
        completed_failed_count=u.completed_failed_count,
        outcome=u.outcome,
        not_run=list(u.not_run or []),
        parent_updateid=u.parent_updateid,
        relation=u.relation,
        children=[UpdateSummary(**_summary_fields(c)) for c in children],
        rollout=u.rollout,
        batches_total=u.batches_total,
        batches_finished=u.batches_finished,
        awaiting_batch=u.awaiting_batch,
        batch_list=[
            BatchStatus(batch=b.batch, batches=b.batches, ips=list(b.ips or []), cdn_dirs=list(b.cdn_dirs or []),
                        ok_count=b.ok_count, failed_count=b.failed_count, next=b.next,
                        finished_at=_utc(b.finished_at), confirmed_by=b.confirmed_by,
                        confirmed_at=_utc(b.confirmed_at))
            for b in batches
        ],
        abort_requested_at=_utc(u.abort_requested_at),
        abort_requested_by=u.abort_requested_by,
        abort_reason=u.abort_reason,
        stalled_at=_utc(u.stalled_at),
        silent_targets=list(u.silent_targets or []),
        stalled_after_seconds=u.stalled_after_seconds,
        last_progress_at=_utc(u.last_progress_at),
        timeline=_timeline(u),
        ip_list=[
            IpStatus(ip=r.ip, group=r.group, expected=r.expected, reported=r.reported, not_run=r.not_run, ok=r.ok,
                     servers_ok=r.servers_ok, servers_failed=r.servers_failed, finished_at=_utc(r.finished_at))
            for r in ips
        ],
        ips_total=ips_total,
        ips_offset=ips_offset,
        server_list=[
            ServerStatus(ip=r.ip, server=r.server, group=r.group, expected=r.expected, reported=r.reported,
                         not_run=not r.reported and r.ip in not_run_ips, ok=r.ok,
                         update_status=r.update_status, update_text=r.update_text, erl_status=r.erl_status,
                         erl_text=r.erl_text, finished_at=_utc(r.finished_at))
            for r in servers
        ],
        servers_total=servers_total,
        servers_offset=servers_offset,
        cdn_dir_list=[
            CdnDirStatus(cdn_root_url=r.cdn_root_url, cdn_dir=r.cdn_dir, expected=r.expected, not_run=r.not_run,
                         status=r.status,
                         data=r.data, reported_by=r.reported_by, finished_at=_utc(r.finished_at))
            for r in cdn
        ],
        rsync_target_list=[
            RsyncTargetStatus(name=r.name, ip=r.ip, port=r.port, module=r.module, user=r.user, requested=r.requested,
                              ok=r.ok, bytes=r.bytes, seconds=r.seconds, error=r.error,
                              reported_at=_utc(r.reported_at))
            for r in targets
        ],
        file_list=[
            FileStatus(file_name=r.file_name, file_md5=r.file_md5, size=r.size, pulled=r.pulled, pushed=r.pushed,
                       in_update=r.in_update)
            for r in files
        ],
        events=[_logged_out(row, row.applied_id is not None) for row in logged],
        events_total=events_total,
        rejected=_rejected_out(session, rejected),
    )


def _logged_out(row: Any, applied: bool) -> LoggedEventOut:
    """``row``: a :class:`LoggedEvent` or a row of its columns."""
    return LoggedEventOut(
        position=row.position,
        event_id=row.event_id,
        type=row.type,
        source=row.source,
        sequence=row.sequence,
        time=_must_utc(row.event_time),
        received_at=_must_utc(row.received_at),
        applied=applied,
        envelope=json.loads(row.envelope),
    )


def _rejected_out(session: Session, rows: Sequence[RejectedEvent]) -> list[RejectedOut]:
    ids = [r.event_id for r in rows if r.event_id]
    logged: set[str] = set()
    if ids:
        logged.update(session.scalars(select(LoggedEvent.event_id).where(LoggedEvent.event_id.in_(ids))).all())
    return [
        RejectedOut(
            id=r.id, service=r.service, reason=r.reason, routing_key=r.routing_key, message_id=r.message_id,
            event_id=r.event_id, event_type=r.event_type, updateid=r.updateid, project=r.project, area=r.area,
            source=r.source, body=r.body, body_bytes=r.body_bytes, attempt=r.attempt,
            first_parked_at=_must_utc(r.first_parked_at), last_parked_at=_must_utc(r.last_parked_at),
            times=r.times, logged=r.event_id in logged,
        )
        for r in rows
    ]


def list_rejected(session: Session, *, page: int = 1, page_size: int = 50) -> RejectedPage:
    """Messages the projection parked, newest first."""
    total = session.execute(select(func.count()).select_from(RejectedEvent)).scalar_one()
    rows = session.scalars(
        select(RejectedEvent).order_by(RejectedEvent.id.desc()).offset((page - 1) * page_size).limit(page_size)
    ).all()
    return RejectedPage(
        items=_rejected_out(session, rows), total=total, page=page, page_size=page_size,
        pages=max(1, math.ceil(total / page_size)),
    )


def live_state(session: Session) -> LiveState:
    head = session.execute(select(LogHead.position, LogHead.version).where(LogHead.id == HEAD_ID)).first()
    rejected = session.execute(select(func.max(RejectedEvent.id))).scalar_one_or_none() or 0
    if head is None:
        return LiveState(position=0, version=0, rejected=rejected)
    return LiveState(position=head.position, version=head.version, rejected=rejected)


def changes_since(session: Session, before: LiveState, now: LiveState) -> LiveChange:
    """Which updates changed between two live states (None when that cannot be told)."""
    updates: set[str] = set()
    if now.position > before.position:
        updates.update(
            session.scalars(
                select(LoggedEvent.updateid)
                .where(LoggedEvent.position > before.position, LoggedEvent.position <= now.position)
                .distinct()
                .limit(_CHANGED_LIMIT + 1)
            ).all()
        )
    if now.rejected > before.rejected:
        updates.update(
            u for u in session.scalars(
                select(RejectedEvent.updateid)
                .where(RejectedEvent.id > before.rejected, RejectedEvent.id <= now.rejected)
                .distinct()
                .limit(_CHANGED_LIMIT + 1)
            ).all() if u
        )
    # A version step without new rows (an event applied on retry, a repeated rejection,
    # a client that reconnected with an old state) cannot be attributed: say "any".
    explained = now.position > before.position or now.rejected > before.rejected
    unknown = len(updates) > _CHANGED_LIMIT or not explained or before.version > now.version
    return LiveChange(**now.model_dump(), updates=None if unknown else sorted(updates))
