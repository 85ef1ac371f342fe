"""Re-publishing a slice of the log to the events exchange, marked as replayed.

The stored envelopes go out with :data:`bus.publisher.REPLAYED_HEADER` set: live consumers ack and
ignore them unless they opted in (``ConsumerService(accept_replayed=True)``), which a new consumer
catching up does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Protocol

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from bus.contract.envelope import Envelope, EnvelopeError
from bus.publisher import REPLAYED_HEADER
from projections.log.chain import Chain, ChainRow
from projections.log.export import LogFilter, selected
from projections.log.store import read_rows

LOG_POSITION_HEADER = "x-hotupdate-log-position"
"""Set on a re-published event: its position in the log it came from."""


class RepublishError(Exception):
    """The slice cannot be re-published as asked (the reason is fit to show the operator)."""


class Publisher(Protocol):
    """What re-publishing needs of a publisher (:class:`bus.publisher.SyncPublisher` is one)."""

    def publish(self, envelope: Envelope, *, headers: dict[str, Any] | None = None) -> Envelope: ...


def publish_slice(engine: Engine, publisher: Publisher, selection: LogFilter, *,
                  progress: Callable[[int, int], None] | None = None) -> int:
    """Re-publish the selected events in log order, marked as replayed; returns how many were published.

    Each row's own hash is checked first, and its envelope must serialise back to the
    stored bytes, so what is published is exactly what was logged (same id, same bytes).
    """
    with Session(engine) as session:
        total, _, _, (head, _) = selected(session, selection)
        done = 0
        if progress:
            progress(0, total)
        for position, envelope in _verified_envelopes(read_rows(session, up_to=head, where=selection.conditions())):
            publisher.publish(envelope, headers={REPLAYED_HEADER: True, LOG_POSITION_HEADER: position})
            done += 1
            if progress:
                progress(done, total)
    return done


def _verified_envelopes(rows: Iterator[tuple[Any, ...]]) -> Iterator[tuple[int, Envelope]]:
    chain = Chain()
    for values in rows:
        row = ChainRow.of(values)
        position = row.position
        problem = chain.follow(row, gaps=True)
        if problem:
            raise RepublishError(f"position {position} does not verify ({problem}); nothing after it was published")
        stored = row.envelope.encode("utf-8")
        try:
            envelope = Envelope.from_bytes(stored)
        except EnvelopeError as exc:
            raise RepublishError(f"position {position} is not a valid envelope any more ({exc}); "
                                 "nothing after it was published") from None
        if envelope.to_bytes() != stored:
            raise RepublishError(f"position {position}: the stored envelope does not serialise back to the same "
                                 "bytes (the envelope model changed?); nothing after it was published")
        yield position, envelope
