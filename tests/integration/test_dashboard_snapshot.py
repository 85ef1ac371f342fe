"""A dashboard request reads one snapshot: what the projection commits meanwhile shows on the next one.

A detail page is a dozen queries (counts, then servers counted and read rank group by rank
group); read from one snapshot, a row is never shown twice or missed because an ingest
committed between two of them.
"""

from __future__ import annotations

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from projections.dashboard.app import read_only_engine
from projections.ingest import ingest_batch
from projections.models import LoggedEvent, ServerRow
from tests.projection_support import hot_server_flow, migrated_engine


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'view.db'}"
    return request.getfixturevalue("postgres_url")


def _counts(session: Session) -> tuple[int, int]:
    logged = session.scalar(select(func.count()).select_from(LoggedEvent))
    servers = session.scalar(select(func.count()).select_from(ServerRow))
    return int(logged or 0), int(servers or 0)


def test_a_session_keeps_reading_what_it_first_saw_while_the_projection_commits(url):
    writer = migrated_engine(url)
    reader = read_only_engine(url)
    first = hot_server_flow(updateid="5a000000-0000-4000-8000-000000000001")
    second = hot_server_flow(updateid="5a000000-0000-4000-8000-000000000002")
    try:
        ingest_batch(writer, first)
        with Session(reader) as session:
            before = _counts(session)
            ingest_batch(writer, second)  # committed while the request is still reading
            assert _counts(session) == before
        with Session(reader) as session:  # the next request sees it
            after = _counts(session)
        assert after[0] == before[0] + len(second) and after[1] > before[1]
    finally:
        reader.dispose()
        writer.dispose()


def test_the_snapshot_session_still_cannot_write(url):
    writer = migrated_engine(url)
    reader = read_only_engine(url)
    try:
        with Session(reader) as session, pytest.raises(Exception, match=r"(?i)read.only|readonly"):
            session.execute(LoggedEvent.__table__.delete())
    finally:
        reader.dispose()
        writer.dispose()
