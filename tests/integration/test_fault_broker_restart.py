"""Restart the broker (``rabbitmqctl stop_app`` / ``start_app``) in the middle of a hot update.

The broker is shared by everything on this machine, so the restart is short and the app is
always started again (and awaited) in a ``finally``. Meanwhile an operator requests a second
update: the CMDB accepts it into its outbox and delivers it once the broker is back. Both
updates finish with every event logged once and every game server's commands run once.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import pika
import pytest

from demo.world import CDN_DIRS, CDN_ROOT, CLIENT_VERSION
from tests.broker import Broker
from tests.system import BUMP, FINAL, HOT_SERVER_EVENTS, erlang_commands, expected_runs, running_system

pytestmark = [pytest.mark.rabbit, pytest.mark.erlang, pytest.mark.rsync, pytest.mark.slow]

CLIENT_EVENTS = Counter({
    "hotupdate.pull.requested.v1": 1, "hotupdate.files.pulled.v1": 1, "hotupdate.push.requested.v1": 1,
    "hotupdate.files.pushed.v1": 1, "hotupdate.update.requested.v3": 1, "hotupdate.update.started.v1": 1,
    "hotupdate.cdn_dir.finished.v1": len(CDN_DIRS), "hotupdate.update.completed.v2": 1,
})


def _answers(url: str) -> bool:
    try:
        pika.BlockingConnection(pika.URLParameters(url)).close()
        return True
    except pika.exceptions.AMQPError:
        return False


@contextmanager
def broker_stopped(broker: Broker, url: str) -> Iterator[None]:
    broker.rabbitmqctl("stop_app")
    try:
        yield
    finally:
        broker.rabbitmqctl("start_app")
        deadline = time.monotonic() + 60
        while not _answers(url):
            assert time.monotonic() < deadline, "the broker did not come back"
            time.sleep(0.2)


def test_broker_restart_mid_update_loses_nothing_and_the_outbox_delivers_what_was_accepted(
        tmp_path, amqp_url, broker):
    commands = erlang_commands("c:l(role_server).", BUMP, "timer:sleep(1000).")
    with running_system(tmp_path / "world", amqp_url, commands) as system:
        server_update = system.post_update()
        system.wait_state(server_update, {"pulled"})
        system.push(server_update)
        system.wait_logged(server_update, "hotupdate.update.started.v1")
        with broker_stopped(broker, amqp_url):
            assert not _answers(amqp_url)
            # Accepted by the CMDB with the broker away: its outbox holds the *pull requested*.
            client_update = system.post_update("hot_client", CLIENT_VERSION)
            time.sleep(3)  # the executor finishes servers meanwhile, and cannot publish their results
        assert not system.components.children.dead(), "a component died with the broker away"
        final = system.wait_state(server_update, FINAL, timeout=120)
        assert final["state"] == "failed"  # qq_4 on purpose; every other IP updated
        assert sorted(r["ok"] for r in final["results"]) == [False, True, True, True]
        system.wait_state(client_update, {"pulled"}, timeout=60)
        system.push(client_update)
        client_final = system.wait_state(client_update, FINAL, timeout=60)
        assert client_final["state"] == "completed", client_final
        for update_id in (server_update, client_update):
            system.wait_logged(update_id, "hotupdate.update.completed.v2")
        ids = [event_id for event_id, _t, _u in system.event_log()]
        assert len(ids) == len(set(ids))
        assert system.event_counts(server_update) == HOT_SERVER_EVENTS
        assert system.event_counts(client_update) == CLIENT_EVENTS
        assert system.runs() == expected_runs(system.world)
        cdn = system.world.root / "cdn" / CDN_ROOT
        assert all((cdn / d / "lang_zh_cn.json").is_file() for d in CDN_DIRS)
