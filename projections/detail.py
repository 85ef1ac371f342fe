"""Reading one update's detail from the status view: its stages, its targets (paged, failed first), its events."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Integer, String, and_, bindparam, func, not_, or_, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from projections.models import (
    AppliedEvent,
    BatchRow,
    CdnDirRow,
    FileRow,
    IpRow,
    LoggedEvent,
    RejectedEvent,
    RsyncTargetRow,
    ServerRow,
    UpdateRow,
)
from projections.schemas import (
    BatchStatus,
    CdnDirStatus,
    FileStatus,
    IpStatus,
    LoggedEventOut,
    RsyncTargetStatus,
    ServerStatus,
    StageStep,
    UpdateDetail,
    UpdateSummary,
)
from projections.summary import (
    _SUMMARY_COLUMNS,
    Projects,
    _must_utc,
    _rejected_out,
    _rejected_row_visible,
    _summary_fields,
    _summary_values,
    _utc,
)
from projections.view import OPTIONAL_STAGES, STAGE_FIELDS


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
