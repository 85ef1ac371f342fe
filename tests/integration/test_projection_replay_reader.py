"""A rebuild through its reader process equals one in a single process; a broken source, a refusing target.

A rebuild that meets a broken source keeps the view before the break, whether it folds in a reader
process or not; a window the target refuses is rolled back (the target's journal is a file while it
is built) and narrowed down to the event, which is left unapplied. A rebuilt SQLite target has exactly
the indexes of a migrated database, however the rebuild ended.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import cast

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

from projections import log as event_log
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


@pytest.mark.parametrize("reader", [False, True])
def test_a_broken_source_keeps_the_view_before_the_break(tmp_path, source_url, reader):
    live = migrated_engine(source_url)
    with live.begin() as conn:
        conn.execute(text("delete from projection_event_log where position = 20"))
    target_url = f"sqlite:///{tmp_path / 'replayed.db'}"
    with pytest.raises(SourceLogBroken, match="position 21: expected position 20 next, found 21: rows are missing"):
        rebuild(source_url, target_url, window=7, reader=reader)
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


@pytest.mark.parametrize("reader", [False, True])
def test_a_row_whose_columns_disagree_with_its_envelope_stops_the_replay_there(tmp_path, source_url, reader):
    """The hash covers the envelope only; the rebuild compares the columns with the envelope it decodes."""
    with migrated_engine(source_url).begin() as conn:
        conn.execute(text("update projection_event_log set updateid = 'someone-else' where position = 9"))
    target_url = f"sqlite:///{tmp_path / 'replayed.db'}"
    with pytest.raises(SourceLogBroken, match=r"position 9: column updateid \('someone-else'\) disagrees"):
        rebuild(source_url, target_url, window=5, reader=reader)
    assert _head(target_url) == 8


@pytest.mark.parametrize("window", [1, 7, 40])
def test_a_rebuild_folding_in_its_reader_process_equals_the_live_projection(tmp_path, source_url, window):
    """The log is shuffled: updates completed and let go by the reader meet later events (read back from
    the target), and the event the view cannot take is narrowed down to in the main process."""
    target_url = f"sqlite:///{tmp_path / 'replayed.db'}"

    result = rebuild(source_url, target_url, window=window, reader=True)

    live, target = migrated_engine(source_url), migrated_engine(target_url)
    assert [u.type for u in result.unapplied] == ["hotupdate.ip.finished.v1"]
    assert result.applied == result.events - 1 == _head(source_url) - 1
    assert view_of(target) == view_of(live)
    assert log_of(target) == log_of(live)
    assert result.reader_peak_rss_kib > 0
    with Session(target) as s:
        assert event_log.verify(s).ok


REFUSED = "9f0e8d7c-0000-4000-8000-00000000beef"


@pytest.mark.parametrize("reader", [False, True])
def test_a_window_the_target_refuses_is_rolled_back_and_narrowed_to_the_events_it_refuses(tmp_path, source_url,
                                                                                          reader):
    target_url = f"sqlite:///{tmp_path / 'replayed.db'}"
    with migrated_engine(target_url).begin() as conn:  # the target refuses every row of one update
        conn.execute(text(f"CREATE TRIGGER refuse BEFORE INSERT ON projection_updates WHEN NEW.updateid = "
                          f"'{REFUSED}' BEGIN SELECT RAISE(ABORT, 'refused by the target'); END"))

    result = rebuild(source_url, target_url, window=40, reader=reader)

    live, target = migrated_engine(source_url), migrated_engine(target_url)
    logged = cast(list[dict[str, object]], log_of(live)["log"])
    refused = {row["event_id"] for row in logged if row["updateid"] == REFUSED}
    assert refused and {u.event_id for u in result.unapplied if "refused by the target" in u.reason} == refused
    assert result.applied == result.events - len(refused) - 1  # and the event no view can take
    # every row copied once (a window rolled back left nothing behind), the chain intact
    assert log_of(target)["log"] == logged and log_of(target)["head"] == log_of(live)["head"]
    with Session(target) as s:
        assert event_log.verify(s).ok
    assert view_of(target) == {table: [row for row in rows if row["updateid"] != REFUSED]
                               for table, rows in view_of(live).items()}
