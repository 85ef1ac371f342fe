"""The one fold: events into view rows, then each touched update derived once.

Every path into the view runs this: the live ingest (a batch), a rebuild (a window of the log),
a point-in-time rebuild (a prefix of it), and the narrowing of a failing batch (halves of it).
The rows are :class:`projections.view.rows.MemoryRows`; whoever folds loads them first and
writes their changes afterwards (:mod:`projections.view.store`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from bus.contract.envelope import Envelope
from bus.contract.events import Event, UpdateStalled
from projections.models import UpdateRow
from projections.view.derive import derive
from projections.view.order import earliest, latest, when, wins
from projections.view.reducers import REDUCERS
from projections.view.rows import MemoryRows

log = logging.getLogger(__name__)


class ReducerFailed(Exception):
    """The ``index``-th event of a fold raised: its rows are left half-changed (throw them away)."""

    def __init__(self, index: int, error: Exception) -> None:
        super().__init__(f"event {index} of the fold: {type(error).__name__}: {error}")
        self.index, self.error = index, error


def apply(rows: MemoryRows, envelope: Envelope, event: Event) -> UpdateRow:
    """Fold one event into its update's rows (the caller makes sure each event id comes once).

    Counts, stage and status are left to :func:`derive_touched`: they are a function of the rows.
    """
    updateid = envelope.updateid
    rows.touched[updateid] = None
    update = rows.get(UpdateRow, (updateid,))
    at = when(envelope)
    if update is None:
        update = rows.add(UpdateRow, (updateid,), updateid=updateid, project=envelope.project, area=envelope.area,
                          winners={}, stage="unknown", status="in_progress", first_event_at=at, last_event_at=at,
                          event_count=0, batches_finished=0)
    if wins(update, "scope", envelope):
        update.project, update.area = envelope.project, envelope.area
    reducer = REDUCERS.get(type(event))
    if reducer is not None:  # a type without a reducer is still logged and counted
        reducer(rows, update, envelope, event)
    update.event_count = (update.event_count or 0) + 1
    update.first_event_at = earliest(update.first_event_at, at)
    update.last_event_at = latest(update.last_event_at, at)
    if not isinstance(event, UpdateStalled):  # a stall report is not progress
        update.last_progress_at = latest(update.last_progress_at, at)
    return update


def fold(rows: MemoryRows, events: Iterable[tuple[Envelope, Event]]) -> None:
    """Fold ``events`` in order, then derive each touched update; :class:`ReducerFailed` if one raises."""
    for index, (envelope, event) in enumerate(events):
        try:
            apply(rows, envelope, event)
        except Exception as exc:
            raise ReducerFailed(index, exc) from exc
    derive_touched(rows)


def derive_touched(rows: MemoryRows) -> None:
    """Each touched update's counts, stage and status, from its rows."""
    for updateid in rows.touched:
        held = rows.rows_of(updateid)
        update: Any = held.tables[UpdateRow][(updateid,)]
        derive(update, held)


T = TypeVar("T")
Out = TypeVar("Out")


def narrow(items: Sequence[T], attempt: Callable[[Sequence[T]], list[Out]]) -> list[Out]:
    """``attempt(items)`` (one transaction); if it raises, each half the same way, down to single items.

    So one bad event in a big batch costs a few more transactions, not the whole batch done event by
    event. ``attempt`` of one item must not raise for that item's own fault (it leaves it out instead).
    """
    if not items:
        return []
    if len(items) == 1:
        return attempt(items)
    try:
        return attempt(items)
    except Exception as exc:  # narrow down to the events that fail, keep the rest in big transactions
        log.info("fold: %d events failed together (%r); trying each half", len(items), exc)
    half = len(items) // 2
    return narrow(items[:half], attempt) + narrow(items[half:], attempt)
