"""A batch taken in one go (one transaction, one derive per update) gives what the same events give one by one."""

from __future__ import annotations

import random

import pytest
from sqlalchemy import event, select
from sqlalchemy.orm import Session

from projections import ingest, view
from projections.models import AppliedEvent, LoggedEvent
from tests.projection_support import (
    aborted_client_flow,
    aborted_server_flow,
    control_events,
    hot_client_flow,
    hot_server_flow,
    item,
    migrated_engine,
)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def urls(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'fast.db'}", f"sqlite:///{tmp_path / 'careful.db'}"
    return request.getfixturevalue("postgres_url"), f"sqlite:///{tmp_path / 'careful.db'}"


def _state(engine):
    with Session(engine) as s:
        log = [tuple(r) for r in s.execute(
            select(LoggedEvent.position, LoggedEvent.event_id, LoggedEvent.hash).order_by(LoggedEvent.position))]
        applied = sorted(s.scalars(select(AppliedEvent.event_id)).all())
        return view.snapshot(s), log, applied


@pytest.mark.parametrize("batch", [1, 4, 50])
def test_batches_taken_in_one_go_give_the_same_log_and_view_as_event_by_event(urls, batch):
    flow = hot_server_flow() + hot_client_flow() + hot_server_flow(updateid="u-second", failing=())
    request = flow[4][0]
    flow += [item(e) for e in control_events(request).values()]
    flow += aborted_server_flow() + aborted_client_flow()  # targets that never ran: pending vs not run
    shuffled = flow + flow[:6]  # with duplicates, some in the same batch
    random.Random(3).shuffle(shuffled)
    fast, careful = (migrated_engine(u) for u in urls)
    clock = lambda: ingest.utcnow().replace(year=2026, month=11, day=24, hour=7, minute=0, second=0, microsecond=0)  # noqa: E731
    try:
        for start in range(0, len(shuffled), batch):
            chunk = shuffled[start:start + batch]
            a = ingest.ingest_batch(fast, chunk, clock=clock)
            b = [o for one in chunk for o in ingest.ingest_batch(careful, [one], clock=clock)]
            assert [(o.status, o.position) for o in a] == [(o.status, o.position) for o in b]
        assert _state(fast) == _state(careful)
    finally:
        fast.dispose()
        careful.dispose()


def test_a_batch_with_an_unappliable_event_keeps_the_rest(tmp_path):
    from tests.projection_support import ip_finished

    flow = hot_server_flow(complete=False)
    bad = ip_finished(flow[4][0], "fe80::1%" + "x" * 200, "game", {"qq_9": True}, offset=40, minutes=9)
    engine = migrated_engine(f"sqlite:///{tmp_path / 'p.db'}")
    outcomes = ingest.ingest_batch(engine, [*flow, item(bad)])
    assert [o.status for o in outcomes] == ["appended"] * len(flow) + ["failed"]
    with Session(engine) as s:
        assert s.get(AppliedEvent, bad.id) is None and len(s.scalars(select(AppliedEvent)).all()) == len(flow)
    engine.dispose()


def test_a_big_batch_with_one_bad_event_is_narrowed_down_by_halves_not_done_event_by_event(tmp_path):
    from tests.projection_support import ip_finished

    flows = [hot_server_flow(updateid=f"u-{n}", failing=()) for n in range(8)]
    good = [it for flow in flows for it in flow]
    bad = ip_finished(flows[3][4][0], "fe80::1%" + "x" * 200, "game", {"qq_9": True}, offset=40, minutes=9)
    batch = [*good[:60], item(bad), *good[60:]]
    narrowed, reference = (migrated_engine(f"sqlite:///{tmp_path / name}") for name in ("n.db", "r.db"))
    transactions: list[int] = []
    event.listen(narrowed, "begin", lambda _conn: transactions.append(1))
    clock = lambda: ingest.utcnow().replace(year=2026, month=11, day=24, hour=7, minute=0, second=0, microsecond=0)  # noqa: E731
    try:
        outcomes = ingest.ingest_batch(narrowed, batch, clock=clock)
        # halves: two tries per level of a binary search for the one bad event, not one per event
        assert len(transactions) <= 2 * len(batch).bit_length() + 2 < len(batch)
        expected = [o for one in batch for o in ingest.ingest_batch(reference, [one], clock=clock)]
        assert [(o.status, o.position) for o in outcomes] == [(o.status, o.position) for o in expected]
        assert [o.status for o in outcomes].count("failed") == 1 and outcomes[60].status == "failed"
        assert _state(narrowed) == _state(reference)
    finally:
        narrowed.dispose()
        reference.dispose()
