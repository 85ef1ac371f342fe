"""The log records and hashes each event's verified publisher; old rows verify; conflicts; keyed ids (issue 15)."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime

import pytest
from alembic import command
from sqlalchemy import MetaData, Table, insert, select, text, update
from sqlalchemy.orm import Session

from bus.consumer import Conflict
from bus.contract.envelope import derived_event_id, fact_hash
from bus.id_keys import id_key_from_url
from bus.idempotency import ProcessedStore
from bus.identity import component_user
from domain.config import parse_config
from domain.db import alembic_config, make_engine, upgrade
from producers.cmdb.models import HotUpdate
from producers.cmdb.senders import expected_senders, sender_problem
from projections import log as event_log
from projections.ingest import ConflictingDuplicate, ingest_batch
from projections.log.export import LogFilter, export_log, verify_export
from projections.models import GENESIS_HASH, LoggedEvent
from tests.cmdb_support import config_dict
from tests.projection_support import hot_server_flow, item

OPS = component_user("ops_executor", "ops1")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'projection.db'}"
    return str(request.getfixturevalue("postgres_url"))


def _verify(engine):
    with Session(engine) as session:
        return event_log.verify(session)


def _log_as_before_publishers(url: str, items) -> None:
    """The log as the projection wrote it before projection_0004: no publisher column, envelope-only hashes."""
    command.upgrade(alembic_config(url), "projection_0003")
    engine = make_engine(url)
    try:
        table = Table("projection_event_log", MetaData(), autoload_with=engine)
        assert "publisher" not in table.c
        head = event_log.Head(0, GENESIS_HASH, 0)
        received = datetime(2026, 11, 24, 6, 0, tzinfo=UTC)
        with engine.begin() as conn:
            for envelope, _ in items:
                row = event_log.log_row(head, envelope, received)
                del row["publisher"]
                row["hash"] = event_log.chain_hash(head.hash, envelope.to_bytes())  # the old form
                conn.execute(insert(table), [row])
                head.position, head.hash = row["position"], row["hash"]
            conn.execute(text("update projection_head set position = :p, hash = :h where id = 1"),
                         {"p": head.position, "h": head.hash})
    finally:
        engine.dispose()


def test_rows_logged_before_publishers_keep_verifying_next_to_new_ones(url):
    flow = hot_server_flow()
    _log_as_before_publishers(url, flow[:4])
    upgrade(url, "projection")
    engine = make_engine(url)
    try:
        assert _verify(engine).ok  # the migration changed no old row
        ingest_batch(engine, flow[4:], publishers=[OPS] * len(flow[4:]))
        result = _verify(engine)
        assert result.ok and result.count == len(flow)
        assert result.publishers == {None: 4, OPS: len(flow) - 4}
        with Session(engine) as session:
            rows = session.scalars(select(LoggedEvent).order_by(LoggedEvent.position)).all()
        assert [r.publisher for r in rows[:4]] == [None] * 4
        assert rows[4].hash == event_log.chain_hash(rows[3].hash, rows[4].envelope.encode(), OPS)
        assert "not recorded" in event_log.describe_publishers(result.publishers)
    finally:
        engine.dispose()


@pytest.mark.parametrize(("position", "value"), [(6, "team.mallory"), (6, None), (6, ""), (2, OPS)],
                         ids=["changed", "new-row-set-null", "new-row-emptied", "old-row-given-one"])
def test_a_tampered_publisher_breaks_the_chain_at_its_row(url, position, value):
    flow = hot_server_flow()
    _log_as_before_publishers(url, flow[:4])
    upgrade(url, "projection")
    engine = make_engine(url)
    try:
        ingest_batch(engine, flow[4:], publishers=[OPS] * len(flow[4:]))
        with engine.begin() as conn:
            conn.execute(update(LoggedEvent).where(LoggedEvent.position == position).values(publisher=value))
        result = _verify(engine)
        assert (result.ok, result.broken_position) == (False, position)
        assert "publisher" in result.reason
    finally:
        engine.dispose()


def test_an_export_carries_each_publisher_and_a_changed_one_is_found(url):
    flow = hot_server_flow()
    _log_as_before_publishers(url, flow[:2])
    upgrade(url, "projection")
    engine = make_engine(url)
    try:
        ingest_batch(engine, flow[2:], publishers=[OPS] * len(flow[2:]))
        out = io.BytesIO()
        with Session(engine) as session:
            export_log(session, LogFilter(), out)
    finally:
        engine.dispose()
    lines = out.getvalue().splitlines(keepends=True)
    events = [json.loads(line) for line in lines[1:-1]]
    assert json.loads(lines[0])["version"] == 2
    assert ["publisher" in e for e in events[:3]] == [False, False, True]
    assert {e.get("publisher") for e in events[2:]} == {OPS}
    checked = verify_export(lines)
    assert checked.ok and checked.publishers == {None: 2, OPS: len(flow) - 2}
    forged = dict(events[4], publisher="team.mallory")
    tampered = [*lines[:5], json.dumps(forged, ensure_ascii=False, separators=(",", ":")).encode() + b"\n",
                *lines[6:]]
    broken = verify_export(tampered)
    assert (broken.ok, broken.position) == (False, 5) and "publisher" in broken.reason


def test_an_id_logged_with_other_content_is_a_conflict_naming_both_publishers(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'p.db'}")
    upgrade(f"sqlite:///{tmp_path / 'p.db'}", "projection")
    try:
        env, event = hot_server_flow()[0]
        ingest_batch(engine, [(env, event)], publishers=["hotupdate.cmdb"])
        decoy = env.model_copy(update={"data": {**env.data, "requested_by": "mallory"}})
        (outcome,) = ingest_batch(engine, [item(decoy)], publishers=["team.mallory"])
        assert isinstance(outcome.error, ConflictingDuplicate) and isinstance(outcome.error, Conflict)
        reason = str(outcome.error)
        assert reason.startswith("conflict:") and "hotupdate.cmdb" in reason and "team.mallory" in reason
        (again,) = ingest_batch(engine, [(env, event)], publishers=["hotupdate.cmdb"])
        assert again.status == "duplicate"  # the same fact again: harmless
    finally:
        engine.dispose()


# --- the consumers' idempotency store ----------------------------------------------------------------


def test_the_processed_store_tells_a_duplicate_from_a_conflict(tmp_path):
    store = ProcessedStore(f"sqlite:///{tmp_path / 'processed.db'}", "cmdb")
    try:
        env, _ = hot_server_flow()[0]
        store.mark_envelope(env, "hotupdate.cmdb")
        known = store.handled(env.id)
        assert known is not None and known.publisher == "hotupdate.cmdb"
        re_emitted = env.model_copy(update={"time": datetime(2027, 1, 1, tzinfo=UTC), "sequence": env.sequence + 3})
        assert known.conflict(re_emitted, "hotupdate.cmdb") is None
        decoy = env.model_copy(update={"data": {**env.data, "requested_by": "mallory"}})
        reason = known.conflict(decoy, "team.mallory")
        assert reason is not None and reason.startswith("conflict:") and "team.mallory" in reason
        store.mark(env.id + "-old", env.type)  # as marked before bus_0002: no hash, taken as a duplicate
        old = store.handled(env.id + "-old")
        assert old is not None and old.conflict(decoy, "") is None
    finally:
        store.close()


def test_fact_hash_ignores_time_and_sequence_but_not_the_payload():
    env, _ = hot_server_flow()[0]
    assert fact_hash(env) == fact_hash(env.model_copy(update={"sequence": 9, "time": datetime(2027, 1, 1, tzinfo=UTC)}))
    assert fact_hash(env) != fact_hash(env.model_copy(update={"data": {**env.data, "version": "004200009"}}))


# --- ids others cannot squat -----------------------------------------------------------------------


def test_keyed_derived_ids_are_stable_for_their_key_and_not_the_public_ones():
    key = id_key_from_url("amqp://hotupdate.ops_executor.ops1:s3cret@127.0.0.1:5672/")
    first = derived_event_id("parent", "hotupdate.update.completed.v1", secret=key)
    assert first == derived_event_id("parent", "hotupdate.update.completed.v1", secret=key)
    assert first != derived_event_id("parent", "hotupdate.update.completed.v1")  # what anyone could compute
    assert first != derived_event_id("parent", "hotupdate.update.completed.v1", "127.0.0.1", secret=key)
    other = id_key_from_url("amqp://hotupdate.ops_executor.ops1:other@127.0.0.1:5672/")
    assert derived_event_id("parent", "hotupdate.update.completed.v1", secret=other) != first
    # the same login on another host or vhost derives the same ids (a failover broker, say)
    assert id_key_from_url("amqp://hotupdate.ops_executor.ops1:s3cret@10.0.0.2:5671/v") == key
    assert id_key_from_url("amqp://hotupdate.cmdb:s3cret@127.0.0.1/") != key


# --- who may report on an update (pure) -------------------------------------------------------------


def _row(ops_manager: str | None = "ops1") -> HotUpdate:
    return HotUpdate(id="u1", project="ssss", ops_manager=ops_manager)


def test_only_the_updates_ops_manager_and_the_projects_receiver_may_report(tmp_path):
    raw = config_dict()
    raw.pop("broker")
    raw["receivers"] = {"recv1": {"projects": ["ssss"], "version_root": "/v", "backup_root": "/b"},
                        "recv2": {"projects": ["snqxz"], "version_root": "/v", "backup_root": "/b"}}
    config = parse_config(raw, tmp_path / "c.yaml")
    assert expected_senders(config, "update.completed", "ssss", "ops1") == {OPS}
    assert expected_senders(config, "files.pulled", "ssss", None) == {"hotupdate.file_pull.recv1"}
    assert expected_senders(config, "push.failed", "ssss", None) == {"hotupdate.file_push.recv1"}
    env, _ = hot_server_flow()[-1]  # an update.completed
    assert sender_problem(config, env, OPS, _row()) is None
    for stranger in ("team.ssss", component_user("ops_executor", "ops2"), "hotupdate.file_pull.recv1", ""):
        problem = sender_problem(config, env, stranger, _row())
        assert problem is not None and problem.startswith("sender:") and OPS in problem
    assert sender_problem(config, env, OPS, _row(ops_manager=None)) is not None  # not sent anywhere yet
    shared = parse_config({**raw, "broker": {"shared_user": "guest"}}, tmp_path / "d.yaml")
    assert sender_problem(shared, env, "guest", _row()) is None  # development: cannot tell anyone apart


def test_a_rebuild_keeps_each_publisher_and_its_log_verifies(url, tmp_path):
    from projections.rebuild import rebuild

    flow = hot_server_flow()
    _log_as_before_publishers(url, flow[:3])
    upgrade(url, "projection")
    engine = make_engine(url)
    try:
        ingest_batch(engine, flow[3:], publishers=[OPS] * len(flow[3:]))
        with Session(engine) as session:
            source = [tuple(r) for r in session.execute(select(LoggedEvent.position, LoggedEvent.publisher)).all()]
    finally:
        engine.dispose()
    target_url = f"sqlite:///{tmp_path / 'rebuilt.db'}"
    result = rebuild(url, target_url, window=4)
    assert result.events == len(flow) and not result.unapplied
    target = make_engine(target_url)
    try:
        with Session(target) as session:
            rebuilt = [tuple(r) for r in session.execute(select(LoggedEvent.position, LoggedEvent.publisher)).all()]
            assert sorted(rebuilt) == sorted(source)
            assert event_log.verify(session).ok
    finally:
        target.dispose()


async def test_the_dashboard_shows_each_events_publisher_and_a_conflict_as_such(tmp_path):
    import httpx

    from projections.dashboard import create_app
    from projections.ingest import record_rejection
    from tests.projection_support import DASHBOARD_AUTH, dashboard_access

    url = f"sqlite:///{tmp_path / 'p.db'}"
    flow = hot_server_flow()
    _log_as_before_publishers(url, flow[:1])
    upgrade(url, "projection")
    engine = make_engine(url)
    env = flow[0][0]
    decoy = env.model_copy(update={"data": {**env.data, "requested_by": "mallory"}})
    try:
        ingest_batch(engine, flow[1:3], publishers=[OPS, ""])
        (outcome,) = ingest_batch(engine, [item(decoy)], publishers=["team.mallory"])
        record_rejection(engine, service="projection", reason=str(outcome.error), body=decoy.to_bytes(),
                         routing_key=decoy.routing_key, message_id=decoy.id, attempt=1, parked_at=env.time)
    finally:
        engine.dispose()
    app = create_app(url, access=dashboard_access())
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://dash",
                                     headers=DASHBOARD_AUTH) as client:
            page = (await client.get(f"/updates/{env.updateid}")).text
            assert f"<code>{OPS}</code>" in page and "none set" in page and "not recorded" in page
            assert 'class="mark conflict"' in page
            detail = (await client.get(f"/api/updates/{env.updateid}")).json()
            assert [e["publisher"] for e in detail["events"]] == [None, OPS, ""]
            rejected = (await client.get("/rejected")).text
            assert 'class="failed conflict"' in rejected and ">conflict</span>" in rejected
            assert "logged since" not in rejected  # the id is logged, but by the other event
            listed = (await client.get("/api/rejected")).json()["items"]
            assert listed[0]["conflict"] is True and listed[0]["reason"].startswith("conflict:")
    finally:
        app.state.engine.dispose()
