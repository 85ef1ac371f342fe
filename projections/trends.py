"""What the dashboard's charts show: updates per day by outcome, and an update's targets by finish time.

Read from the status view like :mod:`projections.queries`, within the reader's projects; the
dashboard draws them (:mod:`projections.dashboard.charts`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from projections.models import CdnDirRow, IpRow, UpdateRow, as_utc
from projections.queries import RUNNING_STATUSES, Projects, update_conditions
from projections.schemas import UpdateFilters

OUTCOMES = ("succeeded", "failed", "stopped", "running")
"""The outcomes a day's updates are counted by (``stopped`` includes aborted), in the charts' stacking order."""

CHART_DAYS = 14


def outcome(status: str) -> str:
    """The :data:`OUTCOMES` entry an update of ``status`` counts under."""
    if status in RUNNING_STATUSES:
        return "running"
    if status in ("stopped", "aborted"):
        return "stopped"
    return "succeeded" if status == "succeeded" else "failed"


@dataclass(frozen=True)
class DayOutcomes:
    """The updates first seen on ``day`` (UTC), by outcome."""

    day: date
    counts: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass(frozen=True)
class Finished:
    """One target (an IP, or a CDN dir) that reported: when, and whether it succeeded."""

    name: str
    at: datetime
    ok: bool


def updates_per_day(session: Session, filters: UpdateFilters, projects: Projects = None,
                    days: int = CHART_DAYS) -> list[DayOutcomes]:
    """The ``days`` days up to the newest update matching ``filters`` (or up to ``filters.date_to``),
    each with its matching updates by outcome; empty when no update matches."""
    conditions = update_conditions(filters, projects)
    if filters.date_to is not None:
        last = filters.date_to
    else:
        newest = as_utc(session.execute(select(func.max(UpdateRow.first_event_at)).where(*conditions)).scalar())
        if newest is None:
            return []
        last = newest.date()
    first = last - timedelta(days=days - 1)
    day = _day(session)
    rows = session.execute(
        select(day, UpdateRow.status, func.count())
        .where(*conditions, UpdateRow.first_event_at >= datetime.combine(first, time(0), UTC),
               UpdateRow.first_event_at < datetime.combine(last + timedelta(days=1), time(0), UTC))
        .group_by(day, UpdateRow.status)
    ).all()
    by_day: dict[date, dict[str, int]] = {first + timedelta(days=n): dict.fromkeys(OUTCOMES, 0) for n in range(days)}
    for on, status, count in rows:
        when = on if isinstance(on, date) else date.fromisoformat(str(on))
        by_day.setdefault(when, dict.fromkeys(OUTCOMES, 0))[outcome(status)] += int(count)
    return [DayOutcomes(day=d, counts=c) for d, c in sorted(by_day.items())]


def _day(session: Session) -> Any:
    """The UTC day of an update's first event, as ``YYYY-MM-DD`` text."""
    if session.get_bind().dialect.name == "postgresql":
        return func.to_char(func.timezone("UTC", UpdateRow.first_event_at), "YYYY-MM-DD")
    return func.strftime("%Y-%m-%d", UpdateRow.first_event_at)  # SQLite keeps UTC times as text


def finish_times(session: Session, updateid: str, unit: str) -> list[Finished]:
    """The targets of an update that reported, in finish order: its IPs (``unit`` "servers",
    a hot_server update) or its CDN dirs (``unit`` "cdn_dirs")."""
    if unit == "cdn_dirs":
        dirs = session.execute(
            select(CdnDirRow.cdn_root_url, CdnDirRow.cdn_dir, CdnDirRow.finished_at, CdnDirRow.status)
            .where(CdnDirRow.updateid == updateid, CdnDirRow.status.is_not(None), CdnDirRow.finished_at.is_not(None))
        ).all()
        found = [Finished(f"{r.cdn_root_url}/{r.cdn_dir}", _at(r.finished_at), bool(r.status)) for r in dirs]
    else:
        ips = session.execute(
            select(IpRow.ip, IpRow.finished_at, IpRow.ok)
            .where(IpRow.updateid == updateid, IpRow.reported.is_(True), IpRow.finished_at.is_not(None))
        ).all()
        found = [Finished(r.ip, _at(r.finished_at), r.ok is not False) for r in ips]
    return sorted(found, key=lambda f: (f.at, f.name))


def _at(value: datetime) -> datetime:
    converted = as_utc(value)
    assert converted is not None
    return converted
