"""The event log's hash chain verifies, and tampering is found at its position; rejected messages are kept."""

from __future__ import annotations

import hashlib
import itertools
from datetime import UTC, datetime

import pytest
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from projections import log as event_log
from projections.ingest import ingest_batch, record_rejection
from projections.models import LoggedEvent, LogHead, RejectedEvent
from tests.projection_support import hot_server_flow, migrated_engine


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def engine(request, tmp_path):
    url = f"sqlite:///{tmp_path / 'projection.db'}" if request.param == "sqlite" else request.getfixturevalue(
        "postgres_url")
    eng = migrated_engine(url)
    yield eng
    eng.dispose()


@pytest.fixture
def logged(engine):
    flow = hot_server_flow()
    ingest_batch(engine, flow[:5], publishers=[PUBLISHER] * 5)
    ingest_batch(engine, flow[5:], publishers=[PUBLISHER] * len(flow[5:]))
    return flow


PUBLISHER = "hotupdate.ops_executor.ops1"


def _hashed(prev_hash: str, envelope: bytes, publisher: str = PUBLISHER) -> str:
    return hashlib.sha256(bytes.fromhex(prev_hash) + envelope + b"\x00" + publisher.encode()).hexdigest()


def _verify(engine):
    with Session(engine) as s:
        return event_log.verify(s)


def test_each_row_hashes_the_previous_hash_its_canonical_envelope_and_its_publisher(engine, logged):
    with Session(engine) as s:
        rows = s.scalars(select(LoggedEvent).order_by(LoggedEvent.position)).all()
        head = s.get_one(LogHead, 1)
    first = logged[0][0].to_bytes()
    assert rows[0].prev_hash == "0" * 64
    assert rows[0].hash == _hashed("0" * 64, first)
    assert rows[0].envelope.encode("utf-8") == first
    for prev, row in itertools.pairwise(rows):
        assert row.prev_hash == prev.hash
        assert row.publisher == PUBLISHER
        assert row.hash == _hashed(prev.hash, row.envelope.encode())
    assert (head.position, head.hash) == (len(logged), rows[-1].hash)
    assert [r.event_id for r in rows] == [env.id for env, _ in logged]


def test_an_untouched_log_verifies(engine, logged):
    result = _verify(engine)
    assert result.ok and result.count == len(logged)
    assert result.describe() == f"all {len(logged)} events verify"


def test_an_empty_log_verifies(engine):
    result = _verify(engine)
    assert result.ok and result.count == 0


def test_an_altered_envelope_is_found_at_its_position(engine, logged):
    with engine.begin() as conn:
        stored = conn.execute(text("select envelope from projection_event_log where position = 4")).scalar_one()
        conn.execute(
            text("update projection_event_log set envelope = :e where position = 4"),
            {"e": stored.replace('"ok":true', '"ok":false')},
        )
    result = _verify(engine)
    assert not result.ok
    assert result.broken_position == 4 and result.count == 3
    assert "hash does not match the stored envelope" in result.reason


def test_a_rehashed_row_breaks_the_link_to_the_next_one(engine, logged):
    with engine.begin() as conn:
        stored = conn.execute(
            text("select prev_hash, envelope, publisher from projection_event_log where position = 2")).one()
        forged = stored.envelope.replace("20642", "20643")
        digest = event_log.chain_hash(stored.prev_hash, forged.encode(), stored.publisher)
        conn.execute(text("update projection_event_log set envelope = :e, hash = :h where position = 2"),
                     {"e": forged, "h": digest})
    result = _verify(engine)
    assert (result.ok, result.broken_position) == (False, 3)
    assert "prev_hash" in result.reason


def test_a_removed_row_is_found(engine, logged):
    with engine.begin() as conn:
        conn.execute(text("delete from projection_event_log where position = 6"))
    result = _verify(engine)
    assert (result.ok, result.broken_position) == (False, 7)


def test_rows_removed_from_the_end_are_found_through_the_head(engine, logged):
    n = len(logged)
    with engine.begin() as conn:
        conn.execute(text("delete from projection_event_log where position >= :p"), {"p": n - 1})
    result = _verify(engine)
    assert not result.ok and result.broken_position == n - 1
    assert "removed from the end" in result.reason


def test_an_indexed_column_that_disagrees_with_its_envelope_is_found(engine, logged):
    with engine.begin() as conn:
        conn.execute(text("update projection_event_log set updateid = 'other' where position = 5"))
    result = _verify(engine)
    assert (result.ok, result.broken_position) == (False, 5)
    assert "updateid" in result.reason


def test_ingesting_after_verification_keeps_the_chain(engine, logged):
    more = hot_server_flow(updateid="second-update")
    ingest_batch(engine, more)
    result = _verify(engine)
    assert result.ok and result.count == len(logged) + len(more)


def test_a_rejected_message_is_kept_with_its_reason_and_counted_once_per_parking(engine):
    env = hot_server_flow()[0][0]
    body = env.to_bytes().replace(b'"version":"004200000"', b'"version":"4.2"')
    when = datetime(2026, 11, 24, 7, 0, tzinfo=UTC)
    kwargs = dict(service="projection", reason="malformed: data.version: String should match pattern",
                  body=body, routing_key="ssss.cn.pull.requested.v1", message_id=env.id, attempt=1)
    first = record_rejection(engine, parked_at=when, **kwargs)
    again = record_rejection(engine, parked_at=when.replace(minute=5), **kwargs)
    other = record_rejection(engine, parked_at=when, **{**kwargs, "body": b"\xff\xfe not json \x00"})
    assert first == again != other
    with Session(engine) as s:
        row = s.get_one(RejectedEvent, first)
        assert (row.times, row.event_id, row.event_type, row.updateid, row.project) == (
            2, env.id, "hotupdate.pull.requested.v1", env.updateid, "ssss")
        assert row.reason.startswith("malformed: data.version")
        garbage = s.get_one(RejectedEvent, other)
        assert garbage.event_id is None and "\x00" not in garbage.body and garbage.body_bytes == 13
        assert s.get_one(LogHead, 1).version == 3  # each rejection is a change the dashboard hears about
