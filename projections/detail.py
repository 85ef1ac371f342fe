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
from projections.queries import SUMMARY_COLUMNS, Projects, rejected_out, rejected_visible, summary
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
from projections.view import OPTIONAL_STAGES, STAGE_FIELDS


def _timeline(u: UpdateRow) -> list[StageStep]:
    steps = []
    for stage, column, label in STAGE_FIELDS:
        at = getattr(u, column)
        reached = at is not None or (stage == "started" and u.stage in ("started", "completed"))
        if stage in OPTIONAL_STAGES and not reached:
            continue  # a failure that did not happen is not a step
        failed = reached and (
            stage in ("pull_failed", "push_failed", "abort_requested") or (stage == "completed" and not u.final_result)
        )
        steps.append(StageStep(stage=stage, label=label, at=at, reached=reached, failed=failed))
    return steps


def _rank(failed: bool, reported: bool, not_run: bool) -> int:
    """Failed first, then silent, then never started, then ok: what an operator has to look at comes first."""
    return 0 if failed else 3 if reported else 2 if not_run else 1


_UPDATEID = bindparam("updateid", type_=String())


def _of_update(model: Any) -> Any:
    """Every column of ``model``'s rows of the update."""
    return select(*model.__table__.c).where(model.updateid == _UPDATEID)


_DETAIL: dict[str, Any] = {
    "not_run_ips": select(IpRow.ip).where(IpRow.updateid == _UPDATEID, IpRow.not_run.is_(True)),
    "cdn_dirs": _of_update(CdnDirRow).order_by(CdnDirRow.cdn_root_url, CdnDirRow.cdn_dir),
    "rsync_targets": _of_update(RsyncTargetRow).order_by(RsyncTargetRow.name),
    "files": _of_update(FileRow).order_by(FileRow.file_name),
    "events_total": select(func.count()).select_from(LoggedEvent).where(LoggedEvent.updateid == _UPDATEID),
    "logged": select(*LoggedEvent.__table__.c, AppliedEvent.event_id.label("applied_id"))
    .outerjoin(AppliedEvent, AppliedEvent.event_id == LoggedEvent.event_id)
    .where(LoggedEvent.updateid == _UPDATEID)
    .order_by(LoggedEvent.position)
    .limit(bindparam("limit", type_=Integer())),
    "rejected": _of_update(RejectedEvent).order_by(RejectedEvent.id),
    "batches": _of_update(BatchRow).order_by(BatchRow.batch),
    "children": select(*SUMMARY_COLUMNS).where(UpdateRow.parent_updateid == _UPDATEID)
    .order_by(UpdateRow.first_event_at),
}
"""The detail's fixed queries, built once and run on the session's connection with the update's id:
building a SELECT of a table's columns and running it through the ORM took ≈ 60 µs, several times
what SQLite takes to answer these small queries, and the detail runs a dozen of them."""


@dataclass(frozen=True)
class _Ranking:
    """How a list of the detail is ranked: ``rank`` maps the values of the ``keys`` (columns, or a
    condition) to the :func:`_rank`; within a rank the rows are ordered by the columns ``names``."""

    model: Any
    keys: tuple[Any, ...]
    rank: Callable[[tuple[bool | None, ...]], int]
    names: tuple[str, ...]


def _server_rank(group: tuple[bool | None, ...]) -> int:
    reported, ok, ip_not_run = (*group, False)[:3]
    return _rank(bool(reported) and ok is False, bool(reported), bool(ip_not_run))


_NOT_RUN_IP = ServerRow.ip.in_(
    select(IpRow.ip).where(IpRow.updateid == _UPDATEID, IpRow.not_run.is_(True)).scalar_subquery())
_RANKINGS = {
    "servers": _Ranking(ServerRow, (ServerRow.reported, ServerRow.ok), _server_rank, ("ip", "server")),
    "servers_not_run": _Ranking(ServerRow, (ServerRow.reported, ServerRow.ok, _NOT_RUN_IP), _server_rank,
                                ("ip", "server")),
    "ips": _Ranking(IpRow, (IpRow.ok, IpRow.reported, IpRow.not_run),
                    lambda g: _rank(g[0] is False, bool(g[1]), bool(g[2])), ("ip",)),
}


def _ranked_page(session: Session, name: str, updateid: str, offset: int, limit: int | None
                 ) -> tuple[list[Any], int]:
    """Rows ``offset`` to ``offset + limit`` (all from ``offset`` when ``limit`` is None) of an update's
    rows of the ranking ``name`` (one of :data:`_RANKINGS`) ordered by (rank, its ``names`` in
    code-point order), and how many there are.

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
    skip, wanted = offset, total if limit is None else limit
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
    ips, ips_total = _ranked_page(session, "ips", updateid, ips_offset, ips_limit)
    not_run_ips = set(conn.execute(_DETAIL["not_run_ips"], uid).scalars().all())
    # Only a stopped or aborted update has IPs that never ran: its silent servers split in two ranks.
    servers, servers_total = _ranked_page(session, "servers_not_run" if not_run_ips else "servers", updateid,
                                          servers_offset, servers_limit)
    cdn = sorted(conn.execute(_DETAIL["cdn_dirs"], uid).all(),
                 key=lambda r: _rank(r.status is False, bool(r.status), r.not_run))
    visible = rejected_visible(projects)  # the rejected page's rule, in SQL (a reader with every project: none)
    rejected = conn.execute(_DETAIL["rejected"].where(*visible) if visible else _DETAIL["rejected"], uid).all()
    children = [c for c in conn.execute(_DETAIL["children"], uid).all() if projects is None or c.project in projects]
    return UpdateDetail.model_validate({
        **{name: getattr(u, name) for name in _DETAIL_COLUMNS},
        **summary(u),
        "children": [UpdateSummary.model_validate(summary(c)) for c in children],
        "batch_list": [BatchStatus.model_validate(b) for b in conn.execute(_DETAIL["batches"], uid)],
        "timeline": _timeline(u),
        "ip_list": [IpStatus.model_validate(r) for r in ips],
        "ips_total": ips_total,
        "ips_offset": ips_offset,
        "server_list": [ServerStatus.model_validate({**r._mapping, "not_run": not r.reported and r.ip in not_run_ips})
                        for r in servers],
        "servers_total": servers_total,
        "servers_offset": servers_offset,
        "cdn_dir_list": [CdnDirStatus.model_validate(r) for r in cdn],
        "rsync_target_list": [RsyncTargetStatus.model_validate(r) for r in conn.execute(_DETAIL["rsync_targets"], uid)],
        "file_list": [FileStatus.model_validate(r) for r in conn.execute(_DETAIL["files"], uid)],
        "events": [_logged_out(row) for row in _logged_rows(session, updateid, events_limit)],
        "events_total": conn.execute(_DETAIL["events_total"], uid).scalar_one(),
        "rejected": rejected_out(session, rejected, projects),
    })


_DETAIL_COLUMNS = tuple(name for name in UpdateDetail.model_fields
                        if name in UpdateRow.__table__.c and name not in UpdateSummary.model_fields)
"""The detail's fields read as they are from the update's row (the summary's: :func:`summary`)."""


def _logged_rows(session: Session, updateid: str, limit: int) -> list[Any]:
    """The update's first ``limit`` log rows in log order, each with ``applied_id`` (None: not applied)."""
    if limit <= 0:
        return []
    return list(session.connection().execute(_DETAIL["logged"], {"updateid": updateid, "limit": limit}).all())


def _logged_out(row: Any, envelope: dict[str, Any] | None = None) -> LoggedEventOut:
    """``row``: a row of :func:`_logged_rows`; ``envelope``: instead of the stored one."""
    return LoggedEventOut(
        position=row.position, event_id=row.event_id, type=row.type, source=row.source, sequence=row.sequence,
        time=row.event_time, received_at=row.received_at, applied=row.applied_id is not None,
        envelope=json.loads(row.envelope) if envelope is None else envelope, publisher=row.publisher,
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
        fields = _logged_out(row, envelope={}).model_dump_json(exclude={"envelope"})
        events.append(f'{fields[:-1]},"envelope":{row.envelope}}}')  # fields: one JSON object, "{...}"
    rest = detail.model_dump_json(exclude={"events"})
    return f'{{"events":[{",".join(events)}],{rest[1:]}'
