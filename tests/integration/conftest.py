"""Fixtures for integration tests that start real external processes (shared broker fixtures: tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from demo.erlang import ErlangNodes
from demo.rsyncd import RsyncDaemon, RsyncDaemonError
from tests.ops_world import World


@pytest.fixture
def rsync_daemon(tmp_path_factory) -> Iterator[RsyncDaemon]:
    """A running ``rsync --daemon`` on a free loopback port (module, user, secrets); stopped afterwards."""
    daemon = RsyncDaemon(tmp_path_factory.mktemp("rsyncd"))
    try:
        daemon.start()
    except RsyncDaemonError as exc:
        pytest.fail(str(exc), pytrace=False)
    yield daemon
    daemon.stop()


@pytest.fixture
def world(tmp_path) -> World:
    """An ops-manager world on disk (config, game-server dirs, pushed files) for ops_executor tests."""
    return World(tmp_path)


@pytest.fixture
def nodes(world: World) -> Iterator[ErlangNodes]:
    """Real Erlang nodes with the world's cookie; every one is stopped afterwards, and must be."""
    started = ErlangNodes(world.cookie)
    yield started
    survivors = started.stop_all()
    assert not survivors, f"beam processes survived the test: {survivors}"
