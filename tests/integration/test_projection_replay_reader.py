"""The replay's log reader process (projections.replay_process) and the target's indexes.

The reader process is always stopped and joined, whatever ends the replay; one that dies makes
the replay fail with a clear error instead of waiting for it forever. A rebuilt SQLite target has
exactly the indexes of a migrated database, however the replay ended.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import signal
import sqlite3
import threading
import time
from pathlib import Path
from typing import cast

import pytest
from sqlalchemy import text

from projections.replay import ReplayStopped, SourceLogBroken, replay
from projections.replay_fold import FoldedWindow, FoldFailed
from projections.replay_process import ReaderError, ReaderProcess
from projections.replay_window import source_attached, write_folded
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


def _readers() -> list[multiprocessing.process.BaseProcess]:
    return [p for p in multiprocessing.active_children() if p.name == "hotupdate-replay-reader"]


def _head(url: str) -> int:
    position, _hash = cast(tuple[int, str], log_of(migrated_engine(url))["head"])
    return position


def _spools() -> set[str]:
    places = (Path("/dev/shm"), Path(os.environ.get("TMPDIR", "/tmp")))
    return {str(p) for place in places for p in place.glob("hotupdate-replay-*")}


def _empty_target(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'target.db'}"
    migrated_engine(url).dispose()
    return url


def test_the_reader_process_sends_windows_folded_in_order_and_stops_at_one_it_cannot_fold(tmp_path, source_url):
    head = _head(source_url)
    target_url = _empty_target(tmp_path)
    target = migrated_engine(target_url)
    messages = []
    with ReaderProcess(source_url, target_url, head, window=5) as reader, target.connect() as connection, \
            source_attached(connection, str(tmp_path / "live.db")):
        for written, message in enumerate(reader, start=1):  # written as the replay writes them
            messages.append(message)
            if isinstance(message, FoldedWindow):
                write_folded(connection, message, stored=True)
                reader.committed(written)  # a later window may read back an update this one wrote
    windows = [m for m in messages if isinstance(m, FoldedWindow)]
    assert windows[0].first_position == 1
    assert all(0 < w.events == w.last_position - w.first_position + 1 <= 5 for w in windows)
    assert all((a.last_position + 1, a.last_hash) == (b.first_position, b.prev_hash)
               for a, b in itertools.pairwise(windows))
    assert all(w.log_rows is None for w in windows)  # SQLite to SQLite: the writer copies them with SQL
    assert windows[0].new_rows["projection_updates"]  # view rows, not events
    failed = messages[-1]  # the history's IP that is too long for the view
    assert isinstance(failed, FoldFailed) and "ViewLimitError" in failed.reason
    assert (failed.first_position, failed.prev_hash) == (windows[-1].last_position + 1, windows[-1].last_hash)
    assert len(messages) == len(windows) + 1
    assert reader.cpu > 0 and reader.peak_rss_kib > 0
    assert not reader.process.is_alive() and reader.process.exitcode == 0


def test_a_reader_process_that_dies_fails_the_replay_with_a_clear_error_instead_of_a_hang(tmp_path, source_url):
    killed: list[int] = []

    def kill_the_reader_as_it_starts() -> None:  # it takes a good part of a second to import what it needs
        deadline = time.monotonic() + 20
        while not killed and time.monotonic() < deadline:
            for process in _readers():
                if process.pid:
                    os.kill(process.pid, signal.SIGKILL)
                    killed.append(process.pid)
            time.sleep(0.005)

    killer = threading.Thread(target=kill_the_reader_as_it_starts)
    killer.start()
    started = time.monotonic()
    try:
        with pytest.raises(ReplayStopped, match=r"log reader process \(pid \d+\) died \(exit code -9\)"):
            replay(source_url, f"sqlite:///{tmp_path / 'replayed.db'}", reader_process=True)
    finally:
        killer.join()
    assert killed and time.monotonic() - started < 30
    assert not _readers()


def test_iterating_a_killed_reader_process_raises(tmp_path, source_url):
    with ReaderProcess(source_url, _empty_target(tmp_path), 10, window=5) as reader:
        os.kill(reader.process.pid or 0, signal.SIGKILL)
        with pytest.raises(ReaderError, match="died"):
            list(reader)
    assert reader.process.exitcode == -signal.SIGKILL


def test_the_reader_process_is_stopped_and_its_files_removed_when_the_replay_is_interrupted(tmp_path, source_url):
    before = _spools()

    def interrupt(done: int, total: int) -> None:
        if done:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        replay(source_url, f"sqlite:///{tmp_path / 'replayed.db'}", reader_process=True, window=5,
               progress=interrupt)
    assert not _readers()
    assert _spools() <= before


def test_a_reader_that_cannot_read_the_source_says_why(tmp_path):
    with ReaderProcess(f"sqlite:///{tmp_path / 'missing' / 'live.db'}", _empty_target(tmp_path), 10,
                       window=5) as reader, \
            pytest.raises(ReaderError, match="the log reader process failed: OperationalError"):
        list(reader)
    assert not reader.process.is_alive()


def test_a_broken_source_read_in_a_process_keeps_the_view_before_the_break(tmp_path, source_url):
    live = migrated_engine(source_url)
    with live.begin() as conn:
        conn.execute(text("delete from projection_event_log where position = 20"))
    target_url = f"sqlite:///{tmp_path / 'replayed.db'}"
    with pytest.raises(SourceLogBroken, match="position 21: expected position 20 next, found 21: rows are missing"):
        replay(source_url, target_url, reader_process=True, window=7)
    assert _head(target_url) == 19
    assert not _readers()


def _indexes(path: Path) -> list[tuple[str, str, str, str | None]]:
    with sqlite3.connect(path) as connection:
        return sorted(connection.execute("SELECT type, name, tbl_name, sql FROM sqlite_master WHERE type = 'index'"))


@pytest.mark.parametrize("reader_process", [False, True], ids=["read-here", "reader-process"])
def test_a_rebuilt_target_has_exactly_the_indexes_of_a_migrated_database(tmp_path, source_url, reader_process):
    replay(source_url, f"sqlite:///{tmp_path / 'replayed.db'}", reader_process=reader_process, window=13)
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
        replay(source_url, f"sqlite:///{tmp_path / 'replayed.db'}")
    migrated_engine(f"sqlite:///{tmp_path / 'migrated.db'}").dispose()
    assert _indexes(tmp_path / "replayed.db") == _indexes(tmp_path / "migrated.db")


@pytest.mark.parametrize("reader_process", [False, True], ids=["read-here", "reader-process"])
def test_a_row_whose_columns_disagree_with_its_envelope_stops_the_replay_there(tmp_path, source_url, reader_process):
    """The hash covers the envelope only; the reader process compares the columns with the envelope it decodes."""
    with migrated_engine(source_url).begin() as conn:
        conn.execute(text("update projection_event_log set updateid = 'someone-else' where position = 9"))
    target_url = f"sqlite:///{tmp_path / 'replayed.db'}"
    with pytest.raises(SourceLogBroken, match=r"position 9: column updateid \('someone-else'\) disagrees"):
        replay(source_url, target_url, reader_process=reader_process, window=5)
    assert _head(target_url) == 8
    assert not _readers()
