"""How the reducers order events of one update: later wins, earliest stage time, text fit to store.

Every reducer is order-independent: a target's result, or a group of update fields, is
overwritten only by an event later in the update's causal order (:func:`order_key`: sequence,
then event time, then id), and a stage's time is the earliest event time seen for it.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime

from bus.contract.envelope import Envelope
from projections.models import UpdateRow, as_utc


class ViewLimitError(ValueError):
    """A value is too long for the view's key columns (the event stays in the log, unapplied)."""


def order_key(envelope: Envelope, rank: int = 0) -> str:
    """A string that sorts events of one update by (rank, sequence, time, id): later wins."""
    return f"{rank}|{stamp(envelope)[2]}"


def when(envelope: Envelope) -> datetime:
    """The event's time in UTC (SQLite stores wall-clock text: everything stored must be UTC)."""
    return stamp(envelope)[1]


_Stamp = tuple[Envelope | None, datetime, str]
_last_stamp: _Stamp = (None, datetime.min, "")


def stamp(envelope: Envelope) -> _Stamp:
    """(envelope, its time in UTC, its order key without the rank), computed once per envelope.

    Applying one event asks for its time about five times and its order key about three (apply,
    the identity, the reducer's groups and rows): the last envelope's are kept, found by identity
    (envelopes are frozen, and the one kept is referenced here, so no other object can be at its
    address). One tuple, read and replaced whole: threads applying events at once at worst recompute.
    """
    global _last_stamp
    last = _last_stamp
    if last[0] is envelope:
        return last
    last = _last_stamp = (
        envelope, _utc(envelope.time), f"{envelope.sequence:019d}|{_utc_text(envelope.time)}|{envelope.id}")
    return last


# Times are cached too, as the last events' times repeat. Aware datetimes are equal exactly when
# they are the same instant, and both results depend on the instant alone.
@functools.lru_cache(maxsize=512)
def _utc(when: datetime) -> datetime:
    return when.astimezone(UTC)


@functools.lru_cache(maxsize=512)
def _utc_text(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")


def wins(update: UpdateRow, group: str, envelope: Envelope, rank: int = 0) -> bool:
    """Whether ``envelope`` may set the fields of ``group`` (it is not earlier than the one that did)."""
    key = f"{rank}|{stamp(envelope)[2]}"
    winners = update.winners or {}
    current = winners.get(group)
    if current is not None and current > key:
        return False
    update.winners = {**winners, group: key}  # reassign: JSON columns track assignment
    return True


def later(current: str | None, key: str) -> bool:
    return current is None or key >= current


def earliest(current: datetime | None, when: datetime) -> datetime:
    current = as_utc(current)
    return when if current is None or when < current else current


def latest(current: datetime | None, when: datetime) -> datetime:
    current = as_utc(current)
    return when if current is None or when > current else current


def text(value: str) -> str:
    """Free text from events, storable anywhere (PostgreSQL text cannot hold NUL)."""
    return value.replace("\x00", "\ufffd") if "\x00" in value else value  # text rarely has one: the test is cheaper


def fits(value: str, limit: int, what: str) -> str:
    if len(value) > limit:
        raise ViewLimitError(f"{what} is {len(value)} characters; the status view keeps at most {limit}")
    return value


def identity(update: UpdateRow, envelope: Envelope, update_type: str | None, version: str, rank: int) -> None:
    """update_type/version: the requests are authoritative (higher rank), other events fill in."""
    if wins(update, "identity", envelope, rank):
        if update_type is not None:
            update.update_type = update_type
        update.version = version
