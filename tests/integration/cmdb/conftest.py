"""Fixtures shared by the CMDB's tests: its database on SQLite and PostgreSQL, and a test config."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from producers.cmdb.database import CmdbDatabase
from tests.cmdb_support import make_config


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request) -> str:
    return str(request.getfixturevalue(f"{request.param}_url"))


@pytest.fixture
def database(db_url) -> Iterator[CmdbDatabase]:
    db = CmdbDatabase(db_url)
    yield db
    db.close()


@pytest.fixture
def config(tmp_path):
    return make_config(tmp_path)
