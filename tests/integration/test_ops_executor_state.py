"""The ops executor's state on real databases (SQLite file and PostgreSQL), migrated by its Alembic branch."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from bus.events import ServerResult
from consumers.ops_executor.state import ServerOutcome, StateStore
from domain.db import make_engine

OK = ServerResult(data="更新成功", status=True)
FAILED = ServerResult(data="timeout after 5s", status=False)


def _claim(store: StateStore, uid: str = "u-1"):
    return store.claim(update_id=uid, project="ssss", area="cn", update_type="hot_server", version="1",
                       request="{}")


def _exercise(url: str) -> None:
    store = StateStore(url)
    StateStore(url).close()  # migrating twice is harmless
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


def test_state_records_first_result_and_counts_takeovers_on_sqlite(sqlite_url):
    _exercise(sqlite_url)


@pytest.mark.postgres
def test_state_records_first_result_and_counts_takeovers_on_postgres(postgres_url):
    _exercise(postgres_url)
