"""Reading the status view: the list of updates, the rejected messages, the live state.

One update's detail is :mod:`projections.detail`; what the pages share, :mod:`projections.summary`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime, time, timedelta
from typing import Any

from sqlalchemy import ColumnElement, func, not_, select
from sqlalchemy.orm import Session

from projections.detail import update_detail, update_detail_json
from projections.log import HEAD_ID
from projections.models import (
    LoggedEvent,
    LogHead,
    RejectedEvent,
    UpdateRow,
)
from projections.schemas import (
    LiveChange,
    LiveState,
    RejectedPage,
    UpdateFilters,
    UpdatePage,
)
from projections.summary import (
    _SUMMARY_COLUMNS,
    RUNNING_STATUSES,
    Projects,
    _rejected_out,
    _rejected_visible,
    _summary_fields,
    _summary_values,
)

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


def list_rejected(session: Session, *, page: int = 1, page_size: int = 50, projects: Projects = None
                  ) -> RejectedPage:
    """Messages the projection parked (about ``projects``), newest first."""
    visible = _rejected_visible(projects)
    total = session.execute(select(func.count()).select_from(RejectedEvent).where(*visible)).scalar_one()
    rows = session.execute(
        select(*RejectedEvent.__table__.c).where(*visible).order_by(RejectedEvent.id.desc())
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


__all__ = ["RUNNING_STATUSES", "Projects", "changes_since", "facets", "list_rejected", "list_updates", "live_state",
           "update_conditions", "update_detail", "update_detail_json"]
