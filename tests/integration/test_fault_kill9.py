"""Kill -9 one consumer in the middle of a hot_server update and start it again (same command line).

Each time: the update still reaches its final state (the demo world's: every IP but qq_4's
updated, qq_4 failed on purpose); the projection's log holds each event once; no game server
ran its Erlang commands twice (``role_server:bump()`` counts them in each node's ``runs``).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing

import pytest

from consumers.ops_executor.runner import INTERRUPTED_UNKNOWN
from demo.world import SERVERS
from tests.system import BUMP, FINAL, HOT_SERVER_EVENTS, System, erlang_commands, expected_runs, running_system

pytestmark = [pytest.mark.rabbit, pytest.mark.erlang, pytest.mark.rsync, pytest.mark.slow]

IPS = sum(len(ips) for ips in SERVERS.values())
EXPECTED_EVENTS = HOT_SERVER_EVENTS


def assert_completed_once(system: System, update_id: str) -> None:
    final = system.wait_state(update_id, FINAL, timeout=120)
    assert final["state"] == "failed", final  # qq_4 fails on purpose; everything else updated
    results = final.get("results") or []
    assert sorted(r["ok"] for r in results) == [False] + [True] * (IPS - 1), results
    system.wait_logged(update_id, "hotupdate.update.completed.v2")
    log = system.event_log()
    ids = [event_id for event_id, _type, _update in log]
    assert len(ids) == len(set(ids)), "an event id appears twice in the projection's log"
    assert system.event_counts(update_id) == EXPECTED_EVENTS
    assert system.runs() == expected_runs(system.world)


@pytest.fixture
def slow_commands_system(tmp_path, amqp_url) -> Iterator[System]:
    # c:l loads the new code, bump counts the run, the sleep keeps the executor busy mid-command
    commands = erlang_commands("c:l(role_server).", BUMP, "timer:sleep(1500).")
    with running_system(tmp_path / "world", amqp_url, commands) as system:
        yield system


@pytest.fixture
def system(tmp_path, amqp_url) -> Iterator[System]:
    with running_system(tmp_path / "world", amqp_url, erlang_commands("c:l(role_server).", BUMP)) as system:
        yield system


def test_ops_executor_killed_mid_erlang_command_resumes_without_running_any_server_twice(slow_commands_system):
    system = slow_commands_system
    update_id = system.post_update()
    system.wait_state(update_id, {"pulled"})
    system.push(update_id)
    system.wait_until(lambda: any(system.runs().values()), "a game server to run its commands")
    system.kill9("ops_executor")
    assert system.update(update_id)["state"] not in FINAL
    # The runner's commands lead their own sessions, so the running erl_calls outlive the executor,
    # as a command on a remote host would; let them end (erl_call cannot share a node meanwhile).
    time.sleep(2.5)
    system.start_again("ops_executor")
    # A server cut off mid-commands is reported as interrupted (what ran is unknown), never re-run;
    # every other server finishes, and nothing ran twice anywhere.
    final = system.wait_state(update_id, FINAL, timeout=120)
    assert final["state"] == "failed", final
    details = [r["detail"] for r in final.get("results") or []]
    interrupted = {s for d in details for s, o in d["erl_data"].items() if o["data"] == INTERRUPTED_UNKNOWN}
    assert interrupted, details
    system.wait_logged(update_id, "hotupdate.update.completed.v2")
    ids = [event_id for event_id, _type, _update in system.event_log()]
    assert len(ids) == len(set(ids)), "an event id appears twice in the projection's log"
    runs = system.runs()
    assert all(count <= 1 for count in runs.values()), runs  # cut off or not, never twice
    expected = expected_runs(system.world)
    assert {s: c for s, c in runs.items() if s not in interrupted} == {
        s: c for s, c in expected.items() if s not in interrupted
    }


def test_file_push_killed_mid_rsync_pushes_again_and_the_update_completes_once(system):
    system.hold_rsync(True)
    update_id = system.post_update()
    system.wait_state(update_id, {"pulled"})
    system.push(update_id)
    system.wait_until(lambda: system.rsync_calls() >= 1, "file_push to start its rsync")
    system.kill9("file_push")
    system.hold_rsync(False)
    system.start_again("file_push")
    assert_completed_once(system, update_id)
    assert system.rsync_calls() == 2  # the killed push, then its redelivery


def test_file_pull_killed_after_copying_before_ack_redelivers_harmlessly(system):
    # The test holds the write lock on file_pull's idempotency store: the handler copies the
    # files and emits *files pulled*, then blocks marking the event handled; killed there, the
    # redelivered request must re-list the same copy, not pull twice or emit a second event.
    store = system.world.root / "db" / "file_pull.db"
    with closing(sqlite3.connect(store, timeout=30, isolation_level=None)) as lock:
        lock.execute("BEGIN IMMEDIATE")
        update_id = system.post_update()
        system.wait_logged(update_id, "hotupdate.files.pulled.v1")
        system.kill9("file_pull")
        lock.execute("ROLLBACK")
    system.start_again("file_pull")
    system.wait_state(update_id, {"pulled"})
    system.push(update_id)
    assert_completed_once(system, update_id)
    copies = list((system.world.root / "backup").rglob("role_server.beam"))
    assert len(copies) == 1, copies  # one backup copy: the redelivery re-listed it


def test_projection_killed_mid_update_catches_up_with_each_event_once(slow_commands_system):
    system = slow_commands_system
    update_id = system.post_update()
    system.wait_state(update_id, {"pulled"})
    system.push(update_id)
    system.wait_logged(update_id, "hotupdate.update.started.v1")
    system.kill9("projection")
    system.start_again("projection")
    assert_completed_once(system, update_id)
