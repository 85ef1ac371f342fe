"""What the dashboard's pages share of an update and of a rejected message: the summary fields, who may see what."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from pydantic import BaseModel
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from bus.contract.envelope import CONFLICT_PREFIX
from projections.models import LoggedEvent, RejectedEvent, UpdateRow, as_utc
from projections.schemas import Counts, RejectedOut, TargetCounts, UpdateSummary

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


def _rejected_row_visible(row: Any, projects: Collection[str]) -> bool:
    """:func:`_rejected_visible` for one row already read."""
    return row.project in projects or any(row.routing_key.startswith(f"{p}.") for p in projects)


_PLAIN = tuple(name for name in UpdateSummary.model_fields if name in UpdateRow.__table__.c)
"""The summary's fields that are the update row's columns as they are."""
_COUNTED: dict[str, type[BaseModel]] = {
    "servers": Counts, "ips": Counts, "cdn_dirs": Counts, "rsync_targets": TargetCounts}
"""The summary's counts: each ``<kind>_<field>`` column (``targets_...`` for the rsync targets)."""
_SUMMARY_NAMES = (*_PLAIN, *(f"{kind.removeprefix('rsync_')}_{field}"
                             for kind, model in _COUNTED.items() for field in model.model_fields))
_SUMMARY_COLUMNS = tuple(getattr(UpdateRow, name) for name in _SUMMARY_NAMES)
"""What :func:`_summary_fields` reads: a list selects only these (not the detail's JSON columns)."""


def _summary_fields(u: Mapping[str, Any]) -> dict[str, Any]:
    """``u``: the values of :data:`_SUMMARY_NAMES` (:func:`_summary_values`).

    The counts stay plain dicts: a page's summaries are validated in one go (a model per count,
    built in Python, cost more than the validation)."""
    fields = {name: u[name] for name in _PLAIN}
    for kind, model in _COUNTED.items():
        fields[kind] = {field: u[f"{kind.removeprefix('rsync_')}_{field}"] for field in model.model_fields}
    return {**fields, **_timing(u), "progress": _progress(u)}


def _timing(u: Mapping[str, Any]) -> dict[str, Any]:
    """Whether the update still runs, and when it started and finished (a failed pull or push
    finishes it at its last event: nothing follows)."""
    running = u["status"] in RUNNING_STATUSES
    started, first, last = as_utc(u["started_at"]), as_utc(u["first_event_at"]), as_utc(u["last_event_at"])
    finished = None if running else as_utc(u["completed_at"]) or last
    begun = started or first
    duration = None if finished is None or begun is None else max(0.0, (finished - begun).total_seconds())
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


def _rejected_out(session: Session, rows: Sequence[Any], projects: Projects = None) -> list[RejectedOut]:
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
