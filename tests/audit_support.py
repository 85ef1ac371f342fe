"""A logged history for the audit and replay tests: several updates, out of order, with redeliveries.

The log is built the way the live projection builds it, through ``ingest_batch``, one batch a
minute (the batch's clock is its received time), so a prefix of the batches is "the log as
it was at that minute".
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from projections import view
from projections.ingest import ingest_batch
from projections.models import AppliedEvent, LoggedEvent, LogHead, as_utc
from tests.projection_support import (
    T0,
    Item,
    control_events,
    hot_client_flow,
    hot_server_flow,
    ip_finished,
    item,
)

RECEIVED0 = T0 + timedelta(hours=1)


def received(batch: int) -> datetime:
    """When batch ``batch`` (0-based) was received."""
    return RECEIVED0 + timedelta(minutes=batch)


def history(seed: int = 11) -> list[list[Item]]:
    """Batches of events as a projection might receive them: shuffled, redelivered, one it cannot apply."""
    server = hot_server_flow()
    request = server[4][0]
    other = hot_server_flow(updateid="9f0e8d7c-0000-4000-8000-00000000beef", project="mxzj", area="tw",
                            failing=())
    # An IP whose name is too long for the view: logged, never applied (live and replayed alike).
    too_long = ip_finished(request, "fe80::1%" + "x" * 200, "game", {"qq_9": True}, offset=40, minutes=9)
    retry = ip_finished(request, "127.0.0.11", "game", {"qq_1": True, "qq_2": True}, offset=30, minutes=40,
                        note="retried").model_copy(update={"id": "retry-of-127-0-0-11"})
    flow = [*server, *hot_client_flow(), *other, *(item(e) for e in control_events(request).values()),
            item(too_long), item(retry)]
    rng = random.Random(seed)
    received_order = flow + rng.sample(flow, 8)  # eight redeliveries
    rng.shuffle(received_order)
    batches, position = [], 0
    while position < len(received_order):
        size = rng.randint(1, 6)
        batches.append(received_order[position:position + size])
        position += size
    return batches


def ingest_history(engine: Engine, batches: list[list[Item]]) -> None:
    for n, batch in enumerate(batches):
        ingest_batch(engine, batch, clock=lambda n=n: received(n))


def view_of(engine: Engine) -> dict[str, list[dict[str, object]]]:
    """Every status view row (``view.snapshot``)."""
    with Session(engine) as s:
        return view.snapshot(s)


def log_of(engine: Engine) -> dict[str, object]:
    """The log rows (every column), the applied rows and the head's position and hash."""
    with Session(engine) as s:
        table = LoggedEvent.__table__
        rows = [
            {k: as_utc(v) if isinstance(v, datetime) else v for k, v in r.items()}
            for r in s.execute(select(table).order_by(table.c.position)).mappings()
        ]
        applied = [tuple(r) for r in s.execute(
            select(AppliedEvent.event_id, AppliedEvent.position, AppliedEvent.updateid).order_by(AppliedEvent.position)
        )]
        head = s.execute(select(LogHead.position, LogHead.hash)).one()
    return {"log": rows, "applied": applied, "head": tuple(head)}
