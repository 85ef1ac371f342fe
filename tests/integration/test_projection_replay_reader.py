"""A rebuild that meets a broken source keeps the view before the break; the target's indexes.

A rebuilt SQLite target has exactly the indexes of a migrated database, however the rebuild ended.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import cast

import pytest
from sqlalchemy import text

from projections.rebuild import SourceLogBroken, rebuild
from tests.audit_support import history, ingest_history, log_of, view_of
from tests.projection_support import migrated_engine


@pytest.fixture(scope="module")
def batches():
    return history()


@pytest.fixture
def source_url(tmp_path, batches):
    url = f"sqlite:///{tmp_path / 'live.db'}"
    ingest_history(migrated_engine(url), batches)
    return url


def _head(url: str) -> int:
    position, _hash = cast(tuple[int, str], log_of(migrated_engine(url))["head"])
    return position


def test_a_broken_source_keeps_the_view_before_the_break(tmp_path, source_url):
    live = migrated_engine(source_url)
    with live.begin() as conn:
        conn.execute(text("delete from projection_event_log where position = 20"))
    target_url = f"sqlite:///{tmp_path / 'replayed.db'}"
    with pytest.raises(SourceLogBroken, match="position 21: expected position 20 next, found 21: rows are missing"):
        rebuild(source_url, target_url, window=7)
    assert _head(target_url) == 19


def _indexes(path: Path) -> list[tuple[str, str, str, str | None]]:
    with sqlite3.connect(path) as connection:
        return sorted(connection.execute("SELECT type, name, tbl_name, sql FROM sqlite_master WHERE type = 'index'"))


def test_a_rebuilt_target_has_exactly_the_indexes_of_a_migrated_database(tmp_path, source_url):
    rebuild(source_url, f"sqlite:///{tmp_path / 'replayed.db'}", window=13)
    migrated_engine(f"sqlite:///{tmp_path / 'migrated.db'}").dispose()

    replayed = _indexes(tmp_path / "replayed.db")
    assert replayed == _indexes(tmp_path / "migrated.db")
    assert any(name == "ix_projection_updates_status" for _, name, _, _ in replayed)
    assert view_of(migrated_engine(f"sqlite:///{tmp_path / 'replayed.db'}")) == view_of(migrated_engine(source_url))


def test_a_replay_stopped_by_a_broken_source_still_leaves_the_indexes(tmp_path, source_url):
    with migrated_engine(source_url).begin() as conn:
        conn.execute(text("update projection_event_log set envelope = replace(envelope, '\"source\":\"', "
                          "'\"source\":\"forged/') where position = 9"))
    with pytest.raises(SourceLogBroken, match="position 9: hash does not match"):
        rebuild(source_url, f"sqlite:///{tmp_path / 'replayed.db'}")
    migrated_engine(f"sqlite:///{tmp_path / 'migrated.db'}").dispose()
    assert _indexes(tmp_path / "replayed.db") == _indexes(tmp_path / "migrated.db")


def test_a_row_whose_columns_disagree_with_its_envelope_stops_the_replay_there(tmp_path, source_url):
    """The hash covers the envelope only; the rebuild compares the columns with the envelope it decodes."""
    with migrated_engine(source_url).begin() as conn:
        conn.execute(text("update projection_event_log set updateid = 'someone-else' where position = 9"))
    target_url = f"sqlite:///{tmp_path / 'replayed.db'}"
    with pytest.raises(SourceLogBroken, match=r"position 9: column updateid \('someone-else'\) disagrees"):
        rebuild(source_url, target_url, window=5)
    assert _head(target_url) == 8
