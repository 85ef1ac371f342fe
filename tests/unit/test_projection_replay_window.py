"""A rebuild, window by window (projections.rebuild), derives what the live projection derived batch by batch.

Updates whose counts need every rule of :func:`projections.view.derive.derive`: targets the completion
says never ran (pending vs not run), failed and succeeded targets, an update without a completion,
replayed in one window and in windows that split every update.
"""

from __future__ import annotations

import sqlite3

import pytest
from sqlalchemy.orm import Session

from projections import log as event_log
from projections.ingest import ingest_batch
from projections.rebuild import rebuild
from tests.audit_support import log_of, view_of
from tests.projection_support import (
    aborted_client_flow,
    aborted_server_flow,
    hot_server_flow,
    migrated_engine,
)


@pytest.mark.parametrize("window", [1, 3, 1000])
def test_counts_stage_and_status_replayed_in_memory_equal_the_live_ones(tmp_path, window):
    source_url = f"sqlite:///{tmp_path / 'live.db'}"
    live = migrated_engine(source_url)
    items = [*aborted_server_flow(), *aborted_client_flow(), *hot_server_flow(complete=False)]
    for start in range(0, len(items), 4):
        ingest_batch(live, items[start:start + 4])
    target_url = f"sqlite:///{tmp_path / 'replayed.db'}"

    result = rebuild(source_url, target_url, window=window)

    target = migrated_engine(target_url)
    assert result.applied == result.events == len(items) and not result.unapplied
    replayed = view_of(target)
    assert replayed == view_of(live)
    updates = {u["updateid"]: u for u in replayed["projection_updates"]}
    server = updates["aaaa0000-0000-4000-8000-000000000001"]
    assert (server["status"], server["ips_not_run"], server["servers_not_run"], server["servers_pending"]) == (
        "aborted", 1, 1, 0)
    client = updates["cccc0000-0000-4000-8000-000000000001"]
    assert (client["cdn_dirs_ok"], client["cdn_dirs_not_run"], client["cdn_dirs_pending"]) == (1, 1, 0)
    assert log_of(target) == log_of(live)
    with Session(target) as s:
        assert event_log.verify(s).ok


def test_a_replayed_sqlite_file_is_left_with_its_write_ahead_log_like_every_other(tmp_path):
    """The file is built with its journal unsynced and no write-ahead log; afterwards it is an ordinary projection
    database."""
    source_url = f"sqlite:///{tmp_path / 'live.db'}"
    ingest_batch(migrated_engine(source_url), hot_server_flow())
    target = tmp_path / "replayed.db"

    rebuild(source_url, f"sqlite:///{target}")

    with sqlite3.connect(target) as connection:  # not through make_engine, which would set it
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert connection.execute("SELECT count(*) FROM projection_updates").fetchone() == (1,)
    assert not (tmp_path / "replayed.db-journal").exists()  # the rollback journal kept while building is gone
