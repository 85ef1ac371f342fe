"""Reading the status view: the list of updates, the rejected messages, the live state, and what
the pages share of an update (its summary) and of a rejected message. One update's detail is
:mod:`projections.detail`.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from datetime import UTC, datetime, time, timedelta
from typing import Any

from sqlalchemy import ColumnElement, func, not_, or_, select
from sqlalchemy.orm import Session

from bus.contract.envelope import CONFLICT_PREFIX
from projections.log import HEAD_ID
from projections.models import LoggedEvent, LogHead, RejectedEvent, UpdateRow, as_utc
from projections.schemas import (
    Counts,
    LiveChange,
    LiveState,
    RejectedOut,
    RejectedPage,
    TargetCounts,
    UpdateFilters,
    UpdatePage,
    UpdateSummary,
)

RUNNING_STATUSES = ("in_progress", "awaiting_confirm", "stalled")
"""Statuses of an update that has not finished: the list shows these first."""


Projects = Collection[str] | None
"""The projects a reader is granted: the queries below show nothing of any other (None: every project)."""


def rejected_visible(projects: Projects) -> list[Any]:
    """Conditions for the rejected messages about ``projects``: the project its body names, or its
    routing key's first word (the broker lets a publisher use only its projects' keys; a body that
    did not parse names none, and one naming another project than its key is shown to both)."""
    if projects is None:
        return []
    return [or_(RejectedEvent.project.in_(projects),
                *(RejectedEvent.routing_key.startswith(f"{p}.", autoescape=True) for p in projects))]


_PLAIN = tuple(name for name in UpdateSummary.model_fields if name in UpdateRow.__table__.c)
"""The summary's fields that are the update row's columns as they are."""
_COUNT_COLUMNS = {kind: {field: f"{prefix}_{field}" for field in model.model_fields} for kind, prefix, model in (
    ("servers", "servers", Counts), ("ips", "ips", Counts), ("cdn_dirs", "cdn_dirs", Counts),
    ("rsync_targets", "targets", TargetCounts))}
"""The summary's counts: each kind's fields, and the update row's column holding each."""
_SUMMARY_NAMES = (*_PLAIN, *(column for columns in _COUNT_COLUMNS.values() for column in columns.values()))
SUMMARY_COLUMNS = tuple(getattr(UpdateRow, name) for name in _SUMMARY_NAMES)
"""What :func:`summary` reads: a list selects only these (not the detail's JSON columns)."""


def summary(row: Any) -> dict[str, Any]:
    """An :class:`UpdateSummary`'s fields from an :class:`UpdateRow` or a row of :data:`SUMMARY_COLUMNS`.

    A result row's values are read by position (reading 33 of them by name took longer than the rest
    of its summary). The counts stay plain dicts: a page's summaries are validated in one go (a model
    per count, built in Python, cost more than the validation)."""
    if isinstance(row, UpdateRow):
        u = {name: getattr(row, name) for name in _SUMMARY_NAMES}
    else:
        u = dict(zip(_SUMMARY_NAMES, row, strict=True))
    fields = {name: u[name] for name in _PLAIN}
    for kind, columns in _COUNT_COLUMNS.items():
        fields[kind] = {field: u[column] for field, column in columns.items()}
    return {**fields, **_timing(u), "progress": _progress(u)}


def _timing(u: Mapping[str, Any]) -> dict[str, Any]:
    """The update's times in UTC, whether it still runs, and when it started and finished (a failed
    pull or push finishes it at its last event: nothing follows)."""
    running = u["status"] in RUNNING_STATUSES
    started, first, last = as_utc(u["started_at"]), as_utc(u["first_event_at"]), as_utc(u["last_event_at"])
    completed = as_utc(u["completed_at"])
    finished = None if running else completed or last
    begun = started or first
    duration = None if finished is None or begun is None else max(0.0, (finished - begun).total_seconds())
    return {"first_event_at": first, "last_event_at": last, "completed_at": completed, "running": running,
            "started_at": started, "finished_at": finished, "duration_seconds": duration}


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


def rejected_out(session: Session, rows: Sequence[Any], projects: Projects = None) -> list[RejectedOut]:
    """``rows``: rows of :class:`RejectedEvent`'s columns; an update they name is ``update_known``
    when it is in the view and of ``projects`` (a page the reader can open)."""
    ids = [r.event_id for r in rows if r.event_id]
    logged: set[str] = set()
    if ids:
        logged.update(session.scalars(select(LoggedEvent.event_id).where(LoggedEvent.event_id.in_(ids))).all())
    named = {r.updateid for r in rows if r.updateid}
    known: set[str] = set()
    if named:
        granted = [] if projects is None else [UpdateRow.project.in_(projects)]
        known.update(session.scalars(select(UpdateRow.updateid).where(UpdateRow.updateid.in_(named), *granted)).all())
    return [RejectedOut.model_validate({**r._mapping, "logged": r.event_id in logged,
                                        "conflict": r.reason.startswith(CONFLICT_PREFIX),
                                        "update_known": r.updateid in known})
            for r in rows]


_CHANGED_LIMIT = 200


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
        "items": [summary(u) for u in rows],
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
    return list(session.execute(select(*SUMMARY_COLUMNS).where(UpdateRow.updateid.in_(page_ids))
                                .order_by(*order)).all())


def facets(session: Session, projects: Projects = None) -> dict[str, list[str]]:
    """The projects and areas present (of ``projects``), for the list page's filter choices."""
    granted = [] if projects is None else [UpdateRow.project.in_(projects)]
    present = session.scalars(select(UpdateRow.project).where(*granted).distinct().order_by(UpdateRow.project)).all()
    areas = session.scalars(select(UpdateRow.area).where(*granted).distinct().order_by(UpdateRow.area)).all()
    return {"projects": list(present), "areas": list(areas)}


def list_rejected(session: Session, *, page: int = 1, page_size: int = 50, projects: Projects = None
                  ) -> RejectedPage:
    """Messages the projection parked (about ``projects``), newest first."""
    visible = rejected_visible(projects)
    total = session.execute(select(func.count()).select_from(RejectedEvent).where(*visible)).scalar_one()
    rows = session.execute(
        select(*RejectedEvent.__table__.c).where(*visible).order_by(RejectedEvent.id.desc())
        .offset((page - 1) * page_size).limit(page_size)
    ).all()
    return RejectedPage(
        items=rejected_out(session, rows, projects), total=total, page=page, page_size=page_size,
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
                   *rejected_visible(projects))
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
