"""Shared fixtures: a real broker with a fresh vhost per test, temporary databases."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.broker import Broker, NoBroker, find_broker

POSTGRES_URL = os.environ.get("HOTUPDATE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture(scope="session")
def broker() -> Iterator[Broker]:
    try:
        found = find_broker()
    except NoBroker as exc:
        pytest.fail(str(exc), pytrace=False)
    yield found
    if found.container is not None:
        found.container.stop()  # type: ignore[attr-defined]


@pytest.fixture
def amqp_url(broker: Broker) -> Iterator[str]:
    """A broker URL on a vhost no other test sees (nameko's isolation)."""
    vhost, url = broker.new_vhost()
    yield url
    broker.delete_vhost(vhost)


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'test.db'}"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    import uuid

    import sqlalchemy as sa

    admin = sa.create_engine(POSTGRES_URL.replace("postgresql://", "postgresql+psycopg://"),
                             isolation_level="AUTOCOMMIT")
    name = f"hu_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        pytest.fail(f"PostgreSQL at {POSTGRES_URL} is not usable: {exc}", pytrace=False)
    base = POSTGRES_URL.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()
