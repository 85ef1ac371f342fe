"""An absent JSON value is stored as SQL NULL, by the live projection and by a rebuild alike.

JSON columns of the status view (an update's rollout plan, its silent targets, a batch's IPs…) are
often empty. Readers through the ORM see None either way, but SQL and a diff of two databases do not:
JSON ``null`` is a value (``IS NULL`` is false for it). A rebuild used to write ``'null'`` where the
live projection wrote NULL, so a rebuilt database differed from the live one row by row.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing

import pytest
from alembic import command
from sqlalchemy import JSON, text

from domain.db import alembic_config, make_engine, upgrade
from projections.ingest import ingest_batch
from projections.models import Base
from projections.rebuild import rebuild
from tests.projection_support import aborted_server_flow, hot_client_flow, hot_server_flow, migrated_engine


def _nullable_json_columns() -> dict[str, list[str]]:
    """Every nullable JSON column of the projection's tables, by table (the metadata holds every component's)."""
    found: dict[str, list[str]] = {}
    for table in Base.metadata.sorted_tables:
        if not table.name.startswith("projection_"):
            continue
        names = [c.name for c in table.columns if isinstance(c.type, JSON) and c.nullable]
        if names:
            found[table.name] = names
    return found


def _stored_json_nulls(path) -> dict[tuple[str, str], tuple[int, int]]:
    """(table, column) → (rows holding SQL NULL, rows holding JSON null)."""
    counts: dict[tuple[str, str], tuple[int, int]] = {}
    with closing(sqlite3.connect(path)) as db:
        for table, columns in _nullable_json_columns().items():
            for column in columns:
                sql_null, json_null = db.execute(
                    f"SELECT sum({column} IS NULL), sum({column} = 'null') FROM {table}"
                ).fetchone()
                counts[(table, column)] = (sql_null or 0, json_null or 0)
    return counts


def test_the_columns_in_question_are_nullable_json():
    columns = _nullable_json_columns()
    assert {"rollout", "silent_targets", "erlang_cmd_list", "not_run"} <= set(columns["projection_updates"])


def test_live_and_rebuilt_views_store_absent_json_values_as_sql_null(tmp_path):
    live_path, rebuilt_path = tmp_path / "live.db", tmp_path / "rebuilt.db"
    live = migrated_engine(f"sqlite:///{live_path}")
    # Updates without a rollout plan, without silent targets, one that never completed.
    items = [*hot_server_flow(), *hot_client_flow(), *aborted_server_flow(), *hot_server_flow(
        "bbbb0000-0000-4000-8000-000000000002", complete=False)]
    for start in range(0, len(items), 3):
        ingest_batch(live, items[start:start + 3])
    live.dispose()
    rebuild(f"sqlite:///{live_path}", f"sqlite:///{rebuilt_path}")

    live_counts, rebuilt_counts = _stored_json_nulls(live_path), _stored_json_nulls(rebuilt_path)
    assert live_counts == rebuilt_counts
    assert all(json_null == 0 for _sql, json_null in live_counts.values()), live_counts
    # Not vacuous: the rows exist and these columns are empty in them.
    assert live_counts[("projection_updates", "rollout")][0] == 4
    assert live_counts[("projection_updates", "silent_targets")][0] == 4


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'projection.db'}"
    return str(request.getfixturevalue("postgres_url"))


def test_the_migration_turns_stored_json_nulls_into_sql_null_and_keeps_values(url):
    """Databases written before: their JSON nulls become NULL, real values stay as they were."""
    command.upgrade(alembic_config(url), "projection_0004")
    engine = make_engine(url)
    try:
        ingest_batch(engine, hot_server_flow())
        with engine.begin() as conn:  # as a rebuild wrote them before
            conn.execute(text("UPDATE projection_updates SET rollout = 'null', silent_targets = 'null', "
                              "erlang_cmd_list = '[\"c:l(m).\"]'"))
        upgrade(url, "projection")
        with engine.connect() as conn:
            row = conn.execute(text("SELECT rollout IS NULL, silent_targets IS NULL, "
                                    "CAST(erlang_cmd_list AS TEXT) FROM projection_updates")).one()
    finally:
        engine.dispose()
    assert (bool(row[0]), bool(row[1])) == (True, True)
    assert row[2] == '["c:l(m)."]'
