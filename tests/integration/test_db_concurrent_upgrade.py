"""Components started together migrate one database at once: every start-up succeeds, none
fails on a table another created meanwhile (the projection and the dashboard share a file)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from sqlalchemy import inspect

from domain.db import make_engine

MIGRATE = "import sys; from domain.db import upgrade; upgrade(sys.argv[1], 'projection', 'bus')"


def _migrate_at_once(url: str, processes: int = 4) -> list[subprocess.CompletedProcess[str]]:
    started = [subprocess.Popen([sys.executable, "-c", MIGRATE, url], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for _ in range(processes)]
    return [subprocess.CompletedProcess(p.args, p.wait(timeout=120), *p.communicate()) for p in started]


def _assert_all_migrated(url: str, runs: list[subprocess.CompletedProcess[str]]) -> None:
    failures = [r.stderr.strip().splitlines()[-3:] for r in runs if r.returncode != 0]
    assert failures == []
    engine = make_engine(url)
    try:
        tables = set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
    assert {"projection_event_log", "projection_updates", "alembic_version"} <= tables


def test_concurrent_upgrades_of_one_sqlite_file_all_succeed(tmp_path):
    for attempt in range(3):  # the race needs the processes to overlap: give it a few chances
        url = f"sqlite:///{tmp_path / f'shared{attempt}.db'}"
        _assert_all_migrated(url, _migrate_at_once(url))


@pytest.mark.postgres
def test_concurrent_upgrades_of_one_postgres_database_all_succeed(postgres_url):
    _assert_all_migrated(postgres_url, _migrate_at_once(postgres_url))
