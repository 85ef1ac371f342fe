"""Every delivery duplicated, and an update's events reordered: the status view and the side effects do not change.

A clean hot_server update runs through the whole system while its *update requested* is
delivered to the executor twice more mid-run. Then the update's recorded events are
published again, twice each, in a shuffled order, to everyone bound to them (projection,
CMDB process manager, file_pull, file_push, executor), and also to a second projection that
starts empty and sees only the shuffled duplicates. The live view, the CMDB's view and the
second projection's view all equal the clean run's; no game server ran anything twice; the
log did not grow.
"""

from __future__ import annotations

import json
import random
import sqlite3
import time
from contextlib import closing

import pika
import pytest

from bus.consumer import ConsumerService
from bus.contract.envelope import Envelope
from bus.topology import Topology
from tests.system import (
    BUMP,
    FINAL,
    HOT_SERVER_EVENTS,
    LoopThread,
    System,
    erlang_commands,
    expected_runs,
    running_system,
    view_diff,
    view_snapshot,
)

pytestmark = [pytest.mark.rabbit, pytest.mark.erlang, pytest.mark.rsync, pytest.mark.slow]

QUEUES = ("hotupdate.file_pull.recv1", "hotupdate.file_push.recv1", "hotupdate.ops_executor.ops1",
          "hotupdate.projection", "hotupdate.cmdb")


def _envelopes(system: System, update_id: str) -> list[bytes]:
    with closing(sqlite3.connect(system.world.root / "db" / "projection.db")) as db:
        rows = db.execute("SELECT envelope FROM projection_event_log WHERE updateid = ? ORDER BY position",
                          (update_id,)).fetchall()
    return [str(r[0]).encode("utf-8") for r in rows]


def _publish(channel: pika.adapters.blocking_connection.BlockingChannel, bodies: list[bytes]) -> None:
    for body in bodies:
        env = Envelope.from_bytes(body)
        channel.basic_publish(Topology().events_exchange, env.routing_key, body,
                              pika.BasicProperties(delivery_mode=2, message_id=env.id, user_id="guest",
                                                   content_type="application/json"))


def _quiet(system: System, channel: pika.adapters.blocking_connection.BlockingChannel) -> bool:
    for queue in QUEUES:
        ok = channel.queue_declare(queue, passive=True)
        if ok.method.message_count:
            return False
    return True


def test_duplicated_and_reordered_deliveries_change_neither_the_views_nor_the_side_effects(tmp_path, amqp_url):
    commands = erlang_commands("c:l(role_server).", BUMP, "timer:sleep(500).")
    with running_system(tmp_path / "world", amqp_url, commands) as system:
        connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
        channel = connection.channel()
        update_id = system.post_update()
        system.wait_state(update_id, {"pulled"})
        system.push(update_id)
        system.wait_logged(update_id, "hotupdate.update.requested.v3")
        request = [b for b in _envelopes(system, update_id) if b"update.requested" in b]
        _publish(channel, request * 2)  # while the executor runs it
        final = system.wait_state(update_id, FINAL)
        assert final["state"] == "failed"  # qq_4 on purpose
        system.wait_logged(update_id, "hotupdate.update.completed.v2")
        system.wait_until(lambda: _quiet(system, channel), "the queues to drain")
        time.sleep(1)
        projection_db = system.world.root / "db" / "projection.db"
        clean_view = view_snapshot(projection_db, update_id)
        clean_cmdb = system.update(update_id)
        clean_log = system.event_log()
        assert system.event_counts(update_id) == HOT_SERVER_EVENTS
        assert system.runs() == expected_runs(system.world)
        assert system.rsync_calls() == 1

        # A second projection that starts empty: it sees only the shuffled duplicates.
        from projections.service import build_service

        loop = LoopThread()
        shuffled_db = tmp_path / "shuffled.db"
        consumer: ConsumerService
        consumer, view = build_service(amqp_url=amqp_url, database_url=f"sqlite:///{shuffled_db}",
                                       service="projection_shuffled")

        async def start() -> None:
            view.start()
            await consumer.start()

        async def stop() -> None:
            await consumer.stop(timeout=10)
            await view.close()
            view.engine.dispose()

        try:
            loop.run(start())
            bodies = _envelopes(system, update_id) * 2
            random.Random(8).shuffle(bodies)
            _publish(channel, bodies)
            system.wait_until(lambda: consumer.handled >= len(bodies), "the second projection to take them all")
            system.wait_until(lambda: _quiet(system, channel), "the queues to drain")
            time.sleep(1.5)  # batches commit; late handlers finish
            diff = view_diff(clean_view, view_snapshot(shuffled_db, update_id))
            assert not diff, "\n".join(diff)
        finally:
            loop.run(stop())
            loop.close()

        diff = view_diff(clean_view, view_snapshot(projection_db, update_id))
        assert not diff, "\n".join(diff)
        assert system.update(update_id) == clean_cmdb
        assert system.event_log() == clean_log
        assert system.runs() == expected_runs(system.world)
        assert system.rsync_calls() == 1
        assert json.dumps(clean_view)  # the snapshot is plain data
        connection.close()
