"""What the dashboard's charts show: updates per day by outcome, and an update's targets by finish time.

Read from the status view like :mod:`projections.queries`, within the reader's projects; the
dashboard draws them (:mod:`projections.dashboard.charts`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import Integer, cast, func, select
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


FINISH_BINS = 20
SLOWEST = 5


@dataclass(frozen=True)
class FinishBins:
    """When an update's targets reported, counted from ``start``: ``span_seconds`` cut into equal
    bins of (ok, failed) counts, and the ``slowest`` targets with their seconds after ``start``."""

    start: datetime
    span_seconds: float
    bins: list[tuple[int, int]]
    slowest: list[tuple[Finished, float]]

    @property
    def reported(self) -> int:
        return sum(ok + failed for ok, failed in self.bins)

    @property
    def failed(self) -> int:
        return sum(failed for _, failed in self.bins)


def finish_bins(session: Session, updateid: str, unit: str, begun: datetime | None,
                bins: int = FINISH_BINS) -> FinishBins | None:
    """How the targets of an update that reported spread over time from ``begun`` (its start; else its
    first report): its IPs (``unit`` "servers", a hot_server update) or its CDN dirs ("cdn_dirs").
    None when none reported.

    Counted by the database (three small queries), not row by row in Python: an update of 10,000
    servers has 2,500 IPs, and its page is drawn again on every event while it runs.
    """
    if unit == "cdn_dirs":
        at, ok = CdnDirRow.finished_at, CdnDirRow.status.is_not(False)
        name: tuple[Any, ...] = (CdnDirRow.cdn_root_url, CdnDirRow.cdn_dir)
        where = [CdnDirRow.updateid == updateid, CdnDirRow.status.is_not(None), at.is_not(None)]
    else:
        at, ok, name = IpRow.finished_at, IpRow.ok.is_not(False), (IpRow.ip,)
        where = [IpRow.updateid == updateid, IpRow.reported.is_(True), at.is_not(None)]
    epoch = _epoch(session, at)
    first, last, count = session.execute(select(func.min(epoch), func.max(epoch), func.count()).where(*where)).one()
    if not count:
        return None
    # to the millisecond: SQLite's julianday() is a double, a few microseconds off
    first, last = round(float(first), 3), round(float(last), 3)
    start = begun.timestamp() if begun is not None and begun.timestamp() <= first else first
    span = max(1.0, last - start)
    slot = cast((epoch - start) * bins / span, Integer)
    counts = [[0, 0] for _ in range(bins)]
    for n, succeeded, found in session.execute(select(slot, ok, func.count()).where(*where).group_by(slot, ok)):
        counts[min(bins - 1, max(0, int(n)))][0 if succeeded else 1] += int(found)
    latest = session.execute(select(*name, at, ok).where(*where).order_by(at.desc()).limit(SLOWEST)).all()
    slowest = []
    for row in latest:
        when = _at(row[-2])
        slowest.append((Finished("/".join(row[:-2]), when, bool(row[-1])), when.timestamp() - start))
    return FinishBins(datetime.fromtimestamp(start, UTC), span, [(a, b) for a, b in counts], slowest)


def _epoch(session: Session, column: Any) -> Any:
    """``column`` (a time) in seconds since 1970."""
    if session.get_bind().dialect.name == "postgresql":
        return func.extract("epoch", column)
    return (func.julianday(column) - 2440587.5) * 86400.0  # SQLite keeps UTC times as text


def _at(value: datetime) -> datetime:
    converted = as_utc(value)
    assert converted is not None
    return converted
