"""Reading the status view: the list of updates, one update's detail, the rejected messages, the live state."""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Integer, String, and_, bindparam, func, not_, or_, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from bus.envelope import CONFLICT_PREFIX
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
    UpdateDetail,
    UpdateFilters,
    UpdatePage,
    UpdateSummary,
)
from projections.view import OPTIONAL_STAGES, STAGE_FIELDS

_CHANGED_LIMIT = 200

RUNNING_STATUSES = ("in_progress", "awaiting_confirm", "stalled")
"""Statuses of an update that has not finished: the list shows these first."""

Projects = Collection[str] | None
"""The projects a reader is granted: the queries below show nothing of any other (None: every project)."""


def _rejected_visible(projects: Projects) -> list[Any]:
    """Conditions for the rejected messages about ``projects``: the project its body names, or its
    routing key's first word (the broker lets a publisher use only its projects' keys; a body that
    did not parse names none, and one naming another project than its key is shown to both)."""
    if projects is None:
        return []
    return [or_(RejectedEvent.project.in_(projects),
                *(RejectedEvent.routing_key.startswith(f"{p}.", autoescape=True) for p in projects))]


def _utc(value: datetime | None) -> datetime | None:
    return as_utc(value)


def _must_utc(value: datetime) -> datetime:
    converted = as_utc(value)
    assert converted is not None
    return converted


_SUMMARY_NAMES = (
    "updateid", "project", "area", "update_type", "version", "stage", "status", "requested_by", "final_result",
    "final_data", "first_event_at", "last_event_at", "completed_at", "event_count",
    "servers_expected", "servers_ok", "servers_failed", "servers_pending", "servers_not_run",
    "ips_expected", "ips_ok", "ips_failed", "ips_pending", "ips_not_run",
    "cdn_dirs_expected", "cdn_dirs_ok", "cdn_dirs_failed", "cdn_dirs_pending", "cdn_dirs_not_run",
    "targets_requested", "targets_ok", "targets_failed", "files_count", "started_at",
)
_SUMMARY_COLUMNS = tuple(getattr(UpdateRow, name) for name in _SUMMARY_NAMES)
"""What :func:`_summary_fields` reads: a list selects only these (not the detail's JSON columns)."""


def _summary_fields(u: Mapping[str, Any]) -> dict[str, Any]:
    """``u``: the values of :data:`_SUMMARY_NAMES` (:func:`_summary_values`).

    The counts stay plain dicts: a page's summaries are validated in one go (a model per count,
    built in Python, cost more than the validation)."""
    return {
        "updateid": u["updateid"],
        "project": u["project"],
        "area": u["area"],
        "update_type": u["update_type"],
        "version": u["version"],
        "stage": u["stage"],
        "status": u["status"],
        "requested_by": u["requested_by"],
        "final_result": u["final_result"],
        "final_data": u["final_data"],
        "first_event_at": _must_utc(u["first_event_at"]),
        "last_event_at": _must_utc(u["last_event_at"]),
        "completed_at": _utc(u["completed_at"]),
        "event_count": u["event_count"],
        "servers": {"expected": u["servers_expected"], "ok": u["servers_ok"], "failed": u["servers_failed"],
                    "pending": u["servers_pending"], "not_run": u["servers_not_run"]},
        "ips": {"expected": u["ips_expected"], "ok": u["ips_ok"], "failed": u["ips_failed"],
                "pending": u["ips_pending"], "not_run": u["ips_not_run"]},
        "cdn_dirs": {"expected": u["cdn_dirs_expected"], "ok": u["cdn_dirs_ok"], "failed": u["cdn_dirs_failed"],
                     "pending": u["cdn_dirs_pending"], "not_run": u["cdn_dirs_not_run"]},
        "rsync_targets": {"requested": u["targets_requested"], "ok": u["targets_ok"], "failed": u["targets_failed"]},
        "files_count": u["files_count"],
        **_timing(u),
        "progress": _progress(u),
    }


def _timing(u: Mapping[str, Any]) -> dict[str, Any]:
    """Whether the update still runs, and when it started and finished (a failed pull or push
    finishes it at its last event: nothing follows)."""
    running = u["status"] in RUNNING_STATUSES
    started = _utc(u["started_at"])
    finished = None if running else _utc(u["completed_at"]) or _must_utc(u["last_event_at"])
    begun = started or _must_utc(u["first_event_at"])
    duration = None if finished is None else max(0.0, (finished - begun).total_seconds())
    return {"running": running, "started_at": started, "finished_at": finished, "duration_seconds": duration}


def _progress(u: Mapping[str, Any]) -> dict[str, Any] | None:
    """Servers done of expected for a hot_server update, CDN dirs for a hot_client one (by what it
    names when its type is not known yet); None while it expects none (before its request)."""
    unit = {"hot_server": "servers", "hot_client": "cdn_dirs"}.get(u["update_type"] or "")
    if unit is None:
        unit = "cdn_dirs" if u["cdn_dirs_expected"] and not u["servers_expected"] else "servers"
    ok, failed, expected = u[f"{unit}_ok"], u[f"{unit}_failed"], u[f"{unit}_expected"]
    if not expected and not ok and not failed:
        return None
    return {"unit": unit, "done": ok + failed, "ok": ok, "failed": failed, "expected": max(expected, ok + failed)}


def _summary_values(u: Any) -> dict[str, Any]:
    """:func:`_summary_fields`' input from an :class:`UpdateRow` or a row of :data:`_SUMMARY_COLUMNS`
    (a result row's values by position: reading 33 of them by name took longer than the rest of its summary)."""
    if isinstance(u, UpdateRow):
        return {name: getattr(u, name) for name in _SUMMARY_NAMES}
    return dict(zip(_SUMMARY_NAMES, u, strict=True))


def update_conditions(filters: UpdateFilters, projects: Projects = None) -> list[ColumnElement[bool]]:
    """The conditions on :class:`UpdateRow` of ``filters`` (all but paging), within ``projects``."""
    conditions: list[ColumnElement[bool]] = [] if projects is None else [UpdateRow.project.in_(projects)]
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
    return conditions


def list_updates(session: Session, filters: UpdateFilters, projects: Projects = None) -> UpdatePage:
    """Updates matching ``filters`` of ``projects``, running ones first (:data:`RUNNING_STATUSES`), each
    part most recently active first, one page of them."""
    conditions = update_conditions(filters, projects)
    total = session.execute(select(func.count()).select_from(UpdateRow).where(*conditions)).scalar_one()
    offset, size = (filters.page - 1) * filters.page_size, filters.page_size
    if filters.status is not None:  # one status: running or not, all of them
        rows = _list_part(session, conditions, offset, size)
    else:
        # Two ordered ranges instead of one sort by "running first": each reads an index in order
        # ((status, last_event_at) for the few running, last_event_at for the rest) and stops at the page.
        running = UpdateRow.status.in_(RUNNING_STATUSES)
        n_running = session.execute(
            select(func.count()).select_from(UpdateRow).where(*conditions, running)).scalar_one()
        rows = _list_part(session, [*conditions, running], offset, size) if offset < n_running else []
        if len(rows) < size:
            rows += _list_part(session, [*conditions, not_(running)], max(0, offset - n_running), size - len(rows))
    return UpdatePage.model_validate({
        "items": [_summary_fields(_summary_values(u)) for u in rows],
        "total": total,
        "page": filters.page,
        "page_size": filters.page_size,
        "pages": max(1, math.ceil(total / filters.page_size)),
        "filters": filters,
    })


def _list_part(session: Session, conditions: Sequence[ColumnElement[bool]], offset: int, limit: int) -> list[Any]:
    """Summary rows ``offset`` to ``offset + limit`` of the updates meeting ``conditions``, most recently
    active first."""
    order = (UpdateRow.last_event_at.desc(), UpdateRow.updateid)
    # The page's ids first, then their rows: the database sorts narrow (time, id) pairs instead of
    # whole rows (a filter matching thousands of updates sorted them all, row by row).
    page_ids = (
        select(UpdateRow.updateid).where(*conditions).order_by(*order).offset(offset).limit(limit)
    ).scalar_subquery()
    return list(session.execute(select(*_SUMMARY_COLUMNS).where(UpdateRow.updateid.in_(page_ids))
                                .order_by(*order)).all())


def facets(session: Session, projects: Projects = None) -> dict[str, list[str]]:
    """The projects and areas present (of ``projects``), for the list page's filter choices."""
    granted = [] if projects is None else [UpdateRow.project.in_(projects)]
    present = session.scalars(select(UpdateRow.project).where(*granted).distinct().order_by(UpdateRow.project)).all()
    areas = session.scalars(select(UpdateRow.area).where(*granted).distinct().order_by(UpdateRow.area)).all()
    return {"projects": list(present), "areas": list(areas)}


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


_UPDATEID = bindparam("updateid", type_=String())


def _columns(model: Any) -> tuple[Any, ...]:
    return tuple(model.__table__.c)


_DETAIL: dict[str, Any] = {
    "not_run_ips": select(IpRow.ip).where(IpRow.updateid == _UPDATEID, IpRow.not_run.is_(True)),
    "cdn_dirs": select(*_columns(CdnDirRow)).where(CdnDirRow.updateid == _UPDATEID)
    .order_by(CdnDirRow.cdn_root_url, CdnDirRow.cdn_dir),
    "rsync_targets": select(*_columns(RsyncTargetRow)).where(RsyncTargetRow.updateid == _UPDATEID)
    .order_by(RsyncTargetRow.name),
    "files": select(*_columns(FileRow)).where(FileRow.updateid == _UPDATEID).order_by(FileRow.file_name),
    "events_total": select(func.count()).select_from(LoggedEvent).where(LoggedEvent.updateid == _UPDATEID),
    "logged": select(*_columns(LoggedEvent), AppliedEvent.event_id.label("applied_id"))
    .outerjoin(AppliedEvent, AppliedEvent.event_id == LoggedEvent.event_id)
    .where(LoggedEvent.updateid == _UPDATEID)
    .order_by(LoggedEvent.position)
    .limit(bindparam("limit", type_=Integer())),
    "rejected": select(*_columns(RejectedEvent)).where(RejectedEvent.updateid == _UPDATEID)
    .order_by(RejectedEvent.id),
    "batches": select(*_columns(BatchRow)).where(BatchRow.updateid == _UPDATEID).order_by(BatchRow.batch),
    "children": select(*_SUMMARY_COLUMNS).where(UpdateRow.parent_updateid == _UPDATEID)
    .order_by(UpdateRow.first_event_at),
}
"""The detail's fixed queries, built once and run on the session's connection with the update's id:
building a SELECT of a table's columns and running it through the ORM took ≈ 60 µs, several times
what SQLite takes to answer these small queries, and the detail runs a dozen of them."""


def _server_rank(row: Any, not_run_ips: set[str]) -> int:
    """Failed first, then silent, then never started, then ok: what an operator has to look at comes first."""
    if row.reported and row.ok is False:
        return 0
    if not row.reported:
        return 2 if row.ip in not_run_ips else 1
    return 3


def _server_page(session: Session, updateid: str, not_run_ips: set[str], offset: int, limit: int | None
                 ) -> tuple[list[Any], int]:
    """One page of an update's servers in the detail's order (failed first, by :func:`_server_rank`,
    then IP and name), and how many there are; all of them from ``offset`` when ``limit`` is None."""
    if limit is None:
        servers = session.scalars(select(ServerRow).where(ServerRow.updateid == updateid)).all()
        total = len(servers)
        return sorted(servers, key=lambda r: (_server_rank(r, not_run_ips), r.ip, r.server))[offset:], total
    # Only a stopped or aborted update has IPs that never ran: its silent servers split in two ranks.
    ranking = "servers_not_run" if not_run_ips else "servers"
    return _ranked_page(session, ranking, updateid, offset, limit)


def _ip_page(session: Session, updateid: str, offset: int, limit: int | None) -> tuple[list[Any], int]:
    """One page of an update's IPs in the detail's order (failed first, by :func:`_ip_rank`, then IP),
    and how many there are; all of them from ``offset`` when ``limit`` is None."""
    if limit is None:
        ips = session.scalars(select(IpRow).where(IpRow.updateid == updateid)).all()
        return sorted(ips, key=lambda r: (_ip_rank(r), r.ip))[offset:], len(ips)
    return _ranked_page(session, "ips", updateid, offset, limit)


@dataclass(frozen=True)
class _Ranking:
    """How a list of the detail is ranked: ``rank`` maps the values of the ``keys`` (columns, or a
    condition) to the rank; within a rank the rows are ordered by the columns ``names``."""

    model: Any
    keys: tuple[Any, ...]
    rank: Callable[[tuple[Any, ...]], int]
    names: tuple[str, ...]


def _server_group_rank(group: tuple[Any, ...]) -> int:
    reported, ok, ip_not_run = (*group, False)[:3]
    return 0 if reported and ok is False else 3 if reported else 2 if ip_not_run else 1


def _ip_group_rank(group: tuple[Any, ...]) -> int:
    ok, reported, not_run = group
    return 0 if ok is False else 3 if reported else 2 if not_run else 1


_NOT_RUN_IP = ServerRow.ip.in_(
    select(IpRow.ip).where(IpRow.updateid == _UPDATEID, IpRow.not_run.is_(True)).scalar_subquery())
_RANKINGS = {
    "servers": _Ranking(ServerRow, (ServerRow.reported, ServerRow.ok), _server_group_rank, ("ip", "server")),
    "servers_not_run": _Ranking(ServerRow, (ServerRow.reported, ServerRow.ok, _NOT_RUN_IP), _server_group_rank,
                                ("ip", "server")),
    "ips": _Ranking(IpRow, (IpRow.ok, IpRow.reported, IpRow.not_run), _ip_group_rank, ("ip",)),
}


def _ranked_page(session: Session, name: str, updateid: str, offset: int, limit: int) -> tuple[list[Any], int]:
    """Rows ``offset`` to ``offset + limit`` of an update's rows of the ranking ``name`` (one of
    :data:`_RANKINGS`) ordered by (rank, its ``names`` in code-point order), and how many there are.

    The rank is a function of the ranking's ``keys``, so the rows fall in groups of equal keys,
    counted first in one grouped query. A group's rows ordered by ``names`` are one range of the
    model's failed-first index (updateid, key columns, names), read in order from the page's first
    row on: no query sorts the update's rows (10,000 of them for a big update, per request, was most
    of the detail's time). Where one rank holds several groups (not so for the rows the view writes:
    a reported row has ``ok``, a silent one has not), that rank's rows are sorted by the database,
    still in the same order.

    Rows come back as plain rows named like the model's attributes: building ORM instances cost
    more than the query.
    """
    ranking, dialect = _RANKINGS[name], session.get_bind().dialect.name
    conn, uid = session.connection(), {"updateid": updateid}
    ranks: dict[int, list[tuple[tuple[bool | None, ...], int]]] = {}
    for row in conn.execute(_group_counts(name), uid).all():
        group = tuple(None if v is None else bool(v) for v in row[:-1])
        ranks.setdefault(ranking.rank(group), []).append((group, int(row[-1])))
    total = sum(n for groups in ranks.values() for _, n in groups)
    page: list[Any] = []
    skip, wanted = offset, limit
    for r in sorted(ranks):
        groups = ranks[r]
        size = sum(n for _, n in groups)
        if skip >= size:
            skip -= size
            continue
        if wanted <= 0:
            break
        take = min(wanted, size - skip)
        statement = _rank_page(name, dialect, tuple(g for g, _ in groups))
        page.extend(conn.execute(statement, {**uid, "offset": skip, "limit": take}).all())
        skip, wanted = 0, wanted - take
    return page, total


@functools.cache
def _group_counts(name: str) -> Any:
    """How many of an update's rows have each value of the ranking's keys (built once per ranking)."""
    ranking = _RANKINGS[name]
    return (select(*ranking.keys, func.count()).where(ranking.model.updateid == _UPDATEID)
            .group_by(*ranking.keys))


@functools.cache
def _rank_page(name: str, dialect: str, groups: tuple[tuple[bool | None, ...], ...]) -> Any:
    """A page (``offset``, ``limit``) of an update's rows of one rank, made of the key ``groups``.

    Built once per ranking, dialect and groups (a handful): building a SELECT of a table's columns
    cost more than SQLite takes to answer it.
    """
    ranking = _RANKINGS[name]
    columns = ranking.model.__table__.c
    # Code-point order: PostgreSQL's "C" collation (the failed-first index has it); SQLite's default.
    ordered = [columns[n].collate("C") if dialect == "postgresql" else columns[n] for n in ranking.names]
    if len(groups) == 1:
        where = _group_condition(ranking.keys, groups[0])
        # The key columns in the ORDER BY are constant here; naming them lets PostgreSQL see that
        # the index's order is the order asked for (it does not infer that from IS NULL).
        order = [*(k for k in ranking.keys if isinstance(k, InstrumentedAttribute)), *ordered]
    else:
        where = or_(*(_group_condition(ranking.keys, g) for g in groups))
        order = ordered
    return (select(*columns).where(ranking.model.updateid == _UPDATEID, where).order_by(*order)
            .offset(bindparam("offset", type_=Integer())).limit(bindparam("limit", type_=Integer())))


def _group_condition(keys: tuple[Any, ...], group: tuple[bool | None, ...]) -> Any:
    """The rows whose ``keys`` have the values ``group`` (a key that is a condition: holds or not)."""
    conditions = []
    for key, value in zip(keys, group, strict=True):
        if not isinstance(key, InstrumentedAttribute):
            conditions.append(key if value else not_(key))
        elif value is None:
            conditions.append(key.is_(None))
        else:
            conditions.append(key == value)
    return and_(*conditions)


def _ip_rank(row: Any) -> int:
    """Failed first, then silent, then never started, then ok (the servers' order, per IP)."""
    return 0 if row.ok is False else 3 if row.reported else 2 if row.not_run else 1


def update_detail(session: Session, updateid: str, *, events_limit: int = 1000, servers_offset: int = 0,
                  servers_limit: int | None = None, ips_offset: int = 0, ips_limit: int | None = None,
                  projects: Projects = None) -> UpdateDetail | None:
    """One update's detail; ``servers_limit`` servers from ``servers_offset`` and ``ips_limit`` IPs from
    ``ips_offset``, each in the failed-first order (all of them when the limit is None).
    None when there is no such update of ``projects`` (another project's update is not there)."""
    u = session.get(UpdateRow, updateid)
    if u is None or (projects is not None and u.project not in projects):
        return None
    conn, uid = session.connection(), {"updateid": updateid}
    ips, ips_total = _ip_page(session, updateid, ips_offset, ips_limit)
    not_run_ips = set(conn.execute(_DETAIL["not_run_ips"], uid).scalars().all())
    servers, servers_total = _server_page(session, updateid, not_run_ips, servers_offset, servers_limit)
    cdn = conn.execute(_DETAIL["cdn_dirs"], uid).all()
    cdn = sorted(cdn, key=lambda r: 0 if r.status is False else 3 if r.status else 2 if r.not_run else 1)
    targets = conn.execute(_DETAIL["rsync_targets"], uid).all()
    files = conn.execute(_DETAIL["files"], uid).all()
    events_total = conn.execute(_DETAIL["events_total"], uid).scalar_one()
    logged = _logged_rows(session, updateid, events_limit)
    rejected = [r for r in conn.execute(_DETAIL["rejected"], uid).all()
                if projects is None or _rejected_row_visible(r, projects)]
    batches = conn.execute(_DETAIL["batches"], uid).all()
    children = [c for c in conn.execute(_DETAIL["children"], uid).all() if projects is None or c.project in projects]
    return UpdateDetail(
        **_summary_fields(_summary_values(u)),
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
        children=[UpdateSummary.model_validate(_summary_fields(_summary_values(c))) for c in children],
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
        rejected=_rejected_out(session, rejected, projects),
    )


def _logged_rows(session: Session, updateid: str, limit: int) -> list[Any]:
    """The update's first ``limit`` log rows in log order, each with ``applied_id`` (None: not applied)."""
    if limit <= 0:
        return []
    return list(session.connection().execute(_DETAIL["logged"], {"updateid": updateid, "limit": limit}).all())


def _logged_out(row: Any, applied: bool, envelope: dict[str, Any] | None = None) -> LoggedEventOut:
    """``row``: a :class:`LoggedEvent` or a row of its columns; ``envelope``: instead of the stored one."""
    return LoggedEventOut(
        position=row.position,
        event_id=row.event_id,
        type=row.type,
        source=row.source,
        sequence=row.sequence,
        time=_must_utc(row.event_time),
        received_at=_must_utc(row.received_at),
        applied=applied,
        envelope=json.loads(row.envelope) if envelope is None else envelope,
        publisher=row.publisher,
    )


def update_detail_json(session: Session, updateid: str, *, events_limit: int = 1000, servers_offset: int = 0,
                       servers_limit: int | None = None, ips_offset: int = 0, ips_limit: int | None = None,
                       projects: Projects = None) -> str | None:
    """:func:`update_detail` as JSON (the same document), its raw events' envelopes copied in as stored.

    An envelope is stored as canonical JSON text; parsing it into a dict, validating the dict and
    serialising it again cost more than the rest of the detail together: the first event of an
    update is its request, naming every server (≈ 100 KiB of JSON for 10,000 servers).
    """
    detail = update_detail(session, updateid, events_limit=0, servers_offset=servers_offset,
                           servers_limit=servers_limit, ips_offset=ips_offset, ips_limit=ips_limit,
                           projects=projects)
    if detail is None:
        return None
    events = []
    for row in _logged_rows(session, updateid, events_limit):
        fields = _logged_out(row, row.applied_id is not None, envelope={}).model_dump_json(exclude={"envelope"})
        events.append(f'{fields[:-1]},"envelope":{row.envelope}}}')  # fields: one JSON object, "{...}"
    rest = detail.model_dump_json(exclude={"events"})
    return f'{{"events":[{",".join(events)}],{rest[1:]}'


def _rejected_out(session: Session, rows: Sequence[Any], projects: Projects = None) -> list[RejectedOut]:
    """``rows``: :class:`RejectedEvent` instances or rows of its columns; an update they name is
    ``update_known`` when it is in the view and of ``projects`` (a page the reader can open)."""
    ids = [r.event_id for r in rows if r.event_id]
    logged: set[str] = set()
    if ids:
        logged.update(session.scalars(select(LoggedEvent.event_id).where(LoggedEvent.event_id.in_(ids))).all())
    named = {r.updateid for r in rows if r.updateid}
    known: set[str] = set()
    if named:
        granted = [] if projects is None else [UpdateRow.project.in_(projects)]
        known.update(session.scalars(select(UpdateRow.updateid).where(UpdateRow.updateid.in_(named), *granted)).all())
    return [
        RejectedOut(
            id=r.id, service=r.service, reason=r.reason, routing_key=r.routing_key, message_id=r.message_id,
            event_id=r.event_id, event_type=r.event_type, updateid=r.updateid, project=r.project, area=r.area,
            source=r.source, body=r.body, body_bytes=r.body_bytes, attempt=r.attempt,
            first_parked_at=_must_utc(r.first_parked_at), last_parked_at=_must_utc(r.last_parked_at),
            times=r.times, logged=r.event_id in logged, conflict=r.reason.startswith(CONFLICT_PREFIX),
            update_known=r.updateid in known,
        )
        for r in rows
    ]


def _rejected_row_visible(row: Any, projects: Collection[str]) -> bool:
    """:func:`_rejected_visible` for one row already read."""
    return row.project in projects or any(row.routing_key.startswith(f"{p}.") for p in projects)


def list_rejected(session: Session, *, page: int = 1, page_size: int = 50, projects: Projects = None
                  ) -> RejectedPage:
    """Messages the projection parked (about ``projects``), newest first."""
    visible = _rejected_visible(projects)
    total = session.execute(select(func.count()).select_from(RejectedEvent).where(*visible)).scalar_one()
    rows = session.scalars(
        select(RejectedEvent).where(*visible).order_by(RejectedEvent.id.desc())
        .offset((page - 1) * page_size).limit(page_size)
    ).all()
    return RejectedPage(
        items=_rejected_out(session, rows, projects), total=total, page=page, page_size=page_size,
        pages=max(1, math.ceil(total / page_size)),
    )


def live_state(session: Session) -> LiveState:
    head = session.execute(select(LogHead.position, LogHead.version).where(LogHead.id == HEAD_ID)).first()
    rejected = session.execute(select(func.max(RejectedEvent.id))).scalar_one_or_none() or 0
    if head is None:
        return LiveState(position=0, version=0, rejected=rejected)
    return LiveState(position=head.position, version=head.version, rejected=rejected)


def changes_since(session: Session, before: LiveState, now: LiveState, projects: Projects = None
                  ) -> LiveChange | None:
    """Which updates (of ``projects``) changed between two live states (``updates`` None when that
    cannot be told); None when nothing of ``projects`` changed (never when ``projects`` is None)."""
    updates: set[str] = set()
    granted = [] if projects is None else [LoggedEvent.project.in_(projects)]
    if now.position > before.position:
        updates.update(
            session.scalars(
                select(LoggedEvent.updateid)
                .where(LoggedEvent.position > before.position, LoggedEvent.position <= now.position, *granted)
                .distinct()
                .limit(_CHANGED_LIMIT + 1)
            ).all()
        )
    rejected_seen = False
    if now.rejected > before.rejected:
        rejected = session.scalars(
            select(RejectedEvent.updateid)
            .where(RejectedEvent.id > before.rejected, RejectedEvent.id <= now.rejected,
                   *_rejected_visible(projects))
            .distinct()
            .limit(_CHANGED_LIMIT + 1)
        ).all()
        rejected_seen = bool(rejected)
        updates.update(u for u in rejected if u)
    # A version step without new rows (an event applied on retry, a repeated rejection,
    # a client that reconnected with an old state) cannot be attributed: say "any".
    explained = now.position > before.position or now.rejected > before.rejected
    unknown = len(updates) > _CHANGED_LIMIT or not explained or before.version > now.version
    if projects is not None and not unknown and not updates and not rejected_seen:
        return None  # only other projects changed: a reader of these hears nothing of it
    return LiveChange(**now.model_dump(), updates=None if unknown else sorted(updates))
