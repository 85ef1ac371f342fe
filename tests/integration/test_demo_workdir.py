"""`hotupdate demo` keeps every file of its components in its work directory, none where it was started."""

from __future__ import annotations

from contextlib import ExitStack

import pytest

from demo.run import start_components
from demo.world import World, build

pytestmark = [pytest.mark.rabbit]


def test_demo_components_leave_nothing_in_the_directory_they_were_started_from(tmp_path, amqp_url, monkeypatch):
    started_from = tmp_path / "started_from"
    started_from.mkdir()
    monkeypatch.chdir(started_from)
    world = World(tmp_path / "work", amqp_url, rsync_port=873, rsync_password="unused-here")
    world.root.mkdir()
    build(world)

    with ExitStack() as stack:
        start_components(world, amqp_url, stack)  # every component up and consuming, as the demo starts them

    assert sorted(p.name for p in started_from.iterdir()) == []  # no processed.db, no lock file
    assert (world.root / "db" / "ops_executor.db").exists()  # the executor's handled-event store is in the work dir
