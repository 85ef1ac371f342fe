"""Fixtures for integration tests that start real external processes (shared broker fixtures: tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from demo.rsyncd import RsyncDaemon, RsyncDaemonError


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
