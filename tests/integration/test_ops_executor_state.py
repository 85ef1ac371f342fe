"""The ops executor's state on real databases (SQLite file and PostgreSQL), migrated by its Alembic branch."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from alembic import command

from bus.contract.events import ServerResult
from consumers.ops_executor.records import BatchRecord, ServerOutcome
from consumers.ops_executor.state_tables import StateTables
from domain.db import alembic_config, make_engine

OK = ServerResult(data="更新成功", status=True)
FAILED = ServerResult(data="timeout after 5s", status=False)


def _claim(store: StateTables, uid: str = "u-1"):
    return store.claim(update_id=uid, project="ssss", area="cn", update_type="hot_server", version="1",
                       request="{}")


def _exercise(url: str) -> None:
    store = StateTables(url)
    StateTables(url).close()  # migrating twice is harmless
    try:
        record, created = _claim(store)
        assert created and record.status == "running" and record.attempts == 1
        store.record_server("u-1", ("game", "10.1.1.1", "qq_1"), ServerOutcome(OK, OK))
        store.record_server("u-1", ("game", "10.1.1.1", "qq_1"), ServerOutcome(FAILED, FAILED))
        assert store.server_results("u-1") == {("game", "10.1.1.1", "qq_1"): ServerOutcome(OK, OK)}
        store.mark_interrupted("u-1")
        assert [r.update_id for r in store.unfinished()] == ["u-1"]
        again, created = _claim(store)
        assert not created and again.status == "running" and again.attempts == 2
        store.finish("u-1", status="finished", final_result=True, final_data="全部完成", ok_count=1,
                     failed_count=0)
        assert store.unfinished() == []
        done, _ = _claim(store)
        assert done.status == "finished" and done.attempts == 2 and done.final_result is True
        store.record_cdn("u-1", ("res.x.com", "t1"), FAILED)
        assert store.cdn_results("u-1") == {("res.x.com", "t1"): FAILED}
    finally:
        store.close()
    engine = make_engine(url)
    tables = set(sa.inspect(engine).get_table_names())
    engine.dispose()
    assert {"executor_updates", "executor_server_results", "executor_cdn_results"} <= tables


def _rollout(url: str) -> None:
    """Batches, go-aheads, aborts and the wait for a go-ahead, as the 0002 revision stores them."""
    store = StateTables(url)
    try:
        _claim(store, "u-2")
        first = BatchRecord(1, 3, 1, "await_confirm", datetime(2026, 11, 25, 8, 0, tzinfo=UTC))
        assert store.record_batch("u-2", first) == first
        assert store.record_batch("u-2", BatchRecord(1, 0, 4, "stop", datetime.now(UTC))) == first  # first wins
        assert store.batches("u-2") == {1: first}

        store.mark_waiting("u-2", batch=2, emitted=5)
        assert store.unfinished() == []  # a waiting update is not resumed at start
        waiting, created = _claim(store, "u-2")  # asked again while waiting: not a takeover
        assert not created and (waiting.status, waiting.attempts, waiting.waiting_batch) == ("waiting", 1, 2)
        assert store.record_confirm("u-2", 2, "alice") and store.record_confirm("u-2", 2, "bob")
        assert store.confirmed("u-2", 2) and not store.confirmed("u-2", 3)
        assert not store.record_confirm("u-unknown", 2, "alice")  # not an update of this executor
        reopened = store.reopen("u-2")
        assert reopened is not None and (reopened.waiting_batch, reopened.emitted) == (2, 5)
        assert store.reopen("u-2") is None  # running now, not waiting
        assert store.get("u-2").status == "running"  # type: ignore[union-attr]

        store.record_abort("u-later", "alice", "before its request")
        store.record_abort("u-later", "bob", "again")
        assert store.abort_of("u-later") == type(store.abort_of("u-later"))("alice", "before its request")
        assert store.abort_of("u-2") is None
        done = store.finish("u-2", status="finished", final_result=False, final_data="x", ok_count=3,
                            failed_count=1, outcome="stopped", not_run=["10.0.0.7", "10.0.0.8"])
        assert (done.outcome, done.not_run, done.waiting_batch) == ("stopped", ("10.0.0.7", "10.0.0.8"), None)
    finally:
        store.close()


def test_state_records_first_result_and_counts_takeovers_on_sqlite(sqlite_url):
    _exercise(sqlite_url)
    _rollout(sqlite_url)


@pytest.mark.postgres
def test_state_records_first_result_and_counts_takeovers_on_postgres(postgres_url):
    _exercise(postgres_url)
    _rollout(postgres_url)


@pytest.mark.parametrize("database", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_updates_recorded_before_the_rollout_revision_keep_their_result(database, request):
    url = request.getfixturevalue(f"{database}_url")
    command.upgrade(alembic_config(url), "ops_executor_0001")
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text(
            "INSERT INTO executor_updates (update_id, project, area, update_type, version, request, status, "
            "attempts, refused, final_result, final_data, ok_count, failed_count, started_at) VALUES "
            "('u-old', 'ssss', 'cn', 'hot_server', '1', '{}', 'finished', 1, false, true, '全部完成', 2, 0, "
            ":now)"), {"now": datetime.now(UTC)})
    engine.dispose()

    store = StateTables(url)  # migrates to the head
    try:
        old = store.get("u-old")
        assert old is not None
        assert (old.status, old.final_result, old.outcome, old.not_run, old.emitted) == (
            "finished", True, None, (), 0)
    finally:
        store.close()
    command.downgrade(alembic_config(url), "ops_executor_0001")  # and the revision goes back cleanly
    engine = make_engine(url)
    assert "executor_batches" not in sa.inspect(engine).get_table_names()
    assert "outcome" not in {c["name"] for c in sa.inspect(engine).get_columns("executor_updates")}
    engine.dispose()
