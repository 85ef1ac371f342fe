"""Stall detection: the CMDB owns the update's process, so it notices when the executor falls silent.

An update the executor owes events (``WATCHED_FOR_STALLS``: requested, running, aborting,
or finishing with results missing) that has had no event for ``cmdb.stall_after_seconds``
gets one *update stalled* per silence period, naming the expected targets without a
result (as *update completed*'s ``not_run`` names them). The next event for the update
starts a new period. The event goes through the outbox like every other; its id is derived
from the update's request and the silent period, so a second detector (or a re-run after a
crash) queues the same id, which the outbox skips.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime, timedelta

from sqlalchemy import select

from bus.contract.envelope import derived_event_id
from bus.contract.events import UpdateStalled
from producers.cmdb.database import CmdbDatabase
from producers.cmdb.expected import missing_targets
from producers.cmdb.models import HotUpdate, TargetResult, as_utc, utcnow
from producers.cmdb.outbox import enqueue
from producers.cmdb.service import SOURCE, new_envelope
from producers.cmdb.states import WATCHED_FOR_STALLS

log = logging.getLogger(__name__)


def report_stalls(database: CmdbDatabase, stall_after_seconds: float, now: datetime | None = None) -> list[str]:
    """Queue *update stalled* for every update silent for longer than ``stall_after_seconds``; their ids."""
    now = now or utcnow()
    cutoff = now - timedelta(seconds=stall_after_seconds)
    with database.transaction() as session:
        candidates = session.execute(
            select(HotUpdate.id, HotUpdate.last_event_at, HotUpdate.stalled_for).where(
                HotUpdate.state.in_([str(s) for s in WATCHED_FOR_STALLS])
            )
        ).all()
    # Compared here, not in SQL: SQLite keeps the timestamps as naive text.
    due = [update_id for update_id, last, stalled in candidates if _silent_since(last, stalled, cutoff)]
    return [update_id for update_id in due if _report(database, update_id, stall_after_seconds, cutoff)]


def _silent_since(last: datetime | None, stalled_for: datetime | None, cutoff: datetime) -> bool:
    """Silent since before ``cutoff``, and not yet reported for this silence."""
    last = as_utc(last)
    return last is not None and last <= cutoff and as_utc(stalled_for) != last


def _report(database: CmdbDatabase, update_id: str, stall_after_seconds: float, cutoff: datetime) -> bool:
    with database.transaction() as session:
        row = session.get(HotUpdate, update_id, with_for_update=True)
        # Looked at again under the lock: an event may have arrived since the scan.
        if row is None or row.state not in WATCHED_FOR_STALLS or row.update_event_id is None:
            return False
        last = as_utc(row.last_event_at)
        if last is None or not _silent_since(last, row.stalled_for, cutoff):
            return False
        reported = set(session.scalars(select(TargetResult.target).where(TargetResult.update_id == row.id)).all())
        silent = missing_targets(row, reported)
        event = UpdateStalled(silent_targets=silent, last_event_at=last, stalled_after_seconds=stall_after_seconds)
        envelope = new_envelope(
            event, source=SOURCE, updateid=row.id, project=row.project, area=row.area_code,
            sequence=row.next_sequence(), causationid=row.update_event_id,
            event_id=derived_event_id(row.update_event_id, event.type_name(), last.isoformat(), secret=database.id_key),
        )
        enqueue(session, envelope)
        row.stalled_for = row.last_event_at
        log.warning("update %s stalled: no event since %s; silent: %s", row.id, last, ", ".join(silent) or "-")
        return True


def check_interval(stall_after_seconds: float) -> float:
    """How often to look: a fraction of the stall time, so a stall is reported soon after it is one."""
    return min(max(stall_after_seconds / 4, 0.05), 10.0)


async def watch_stalls(database: CmdbDatabase, stall_after_seconds: float, stop: asyncio.Event) -> None:
    """Look for stalls every :func:`check_interval` until ``stop`` is set; a failed look is retried."""
    interval = check_interval(stall_after_seconds)
    while not stop.is_set():
        try:
            await asyncio.to_thread(report_stalls, database, stall_after_seconds)
        except Exception:  # the database busy or away: look again next time
            log.exception("stall detection failed; retrying in %.1fs", interval)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval)
