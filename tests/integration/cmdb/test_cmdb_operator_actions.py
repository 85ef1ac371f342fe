"""Issue 9 in the CMDB on SQLite and PostgreSQL: rollout on push, abort, confirm, retry failed, rollback,
stall detection; each action's event in the outbox with its state change, or a refusal and nothing queued."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from bus.contract.envelope import Envelope
from bus.contract.events import FileEntry, RolloutPlanV2, UpdateRequested
from domain.config import HotupdateConfig
from producers.cmdb import reads, service
from producers.cmdb.api import create_app
from producers.cmdb.database import CmdbDatabase
from producers.cmdb.errors import BadState
from producers.cmdb.models import as_utc
from producers.cmdb.process_manager import (
    on_batch_finished,
    on_cdn_dir_finished,
    on_files_pulled,
    on_files_pushed,
    on_ip_finished,
    on_update_completed,
    on_update_started,
)
from producers.cmdb.service import PushUpdate, StartUpdate
from producers.cmdb.stalls import report_stalls
from producers.cmdb.states import State
from tests.cmdb_support import (
    auth,
    batch_finished,
    cdn_dir_finished,
    files_pulled,
    files_pushed,
    incoming,
    ip_finished,
    ip_finished_servers,
    outbox,
    row,
    update_completed,
    update_started,
)

ALL_IPS = ("127.0.0.11", "127.0.0.12", "127.0.0.21", "127.0.0.31")


@pytest.fixture
def client(config, database):
    with TestClient(create_app(config, database=database)) as test_client:
        yield test_client


def _requested(
    database: CmdbDatabase, config: HotupdateConfig, *, version: str = "004200000", push: PushUpdate | None = None,
    files: list[FileEntry] | None = None, **overrides: Any,
) -> tuple[str, Envelope]:
    """An update the executor was asked to run; returns (id, its UpdateRequested envelope)."""
    fields = {"project": "ssss", "area": "大陆", "update_type": "hot_server", "version": version, **overrides}
    update_id = service.start_update(database, config, StartUpdate(**fields), requested_by="alice")
    on_files_pulled(incoming(files_pulled(outbox(database)[-1], files)), database)
    service.push_update(database, config, update_id, push or PushUpdate(), requested_by="bob")
    on_files_pushed(incoming(files_pushed(outbox(database)[-1])), database)
    request = outbox(database)[-1]
    assert request.type == UpdateRequested.type_name()
    return update_id, request


def _completed(database: CmdbDatabase, config: HotupdateConfig, **kw: Any) -> tuple[str, Envelope]:
    update_id, request = _requested(database, config, **kw)
    for offset, ip in enumerate(ALL_IPS, start=2):
        on_ip_finished(incoming(ip_finished(request, ip, offset=offset)), database)
    on_update_completed(incoming(update_completed(request)), database)
    assert row(database, update_id).state == State.COMPLETED
    return update_id, request


def _refused(database: CmdbDatabase, call: Any, *words: str) -> None:
    """``call`` raises BadState whose message has ``words``, and queues nothing."""
    before = len(outbox(database))
    with pytest.raises(BadState) as refusal:
        call()
    for word in words:
        assert word in str(refusal.value)
    assert len(outbox(database)) == before


# --- rollout ------------------------------------------------------------------------------


def test_the_rollout_plan_of_the_push_is_carried_into_update_requested(database, config):
    plan = RolloutPlanV2(batch_size=2, pause_seconds=1.5, on_failure="confirm")
    update_id, request = _requested(database, config, push=PushUpdate(rollout=plan))
    assert RolloutPlanV2.model_validate(request.data["rollout"]) == plan
    assert request.data.get("parent_id") is None and request.data.get("relation") is None
    assert reads.get_update(database, update_id).rollout == plan.model_dump(mode="json")


def test_without_a_plan_the_request_has_no_rollout(database, config):
    _update_id, request = _requested(database, config)
    assert request.data.get("rollout") is None


# --- abort --------------------------------------------------------------------------------


def test_abort_of_a_running_update_queues_abort_requested_and_marks_it_aborting(database, config):
    update_id, request = _requested(database, config)
    on_update_started(incoming(update_started(request)), database)
    view = service.abort_update(database, update_id, "bob", "wrong version")
    assert view.state == State.ABORTING
    abort = outbox(database)[-1]
    assert abort.type == "hotupdate.update.abort_requested.v1"
    assert abort.data == {"requested_by": "bob", "reason": "wrong version"}
    assert (abort.updateid, abort.causationid, abort.source) == (update_id, request.id, "hotupdate/cmdb")
    assert abort.sequence > request.sequence
    # the executor's completion then says what the abort kept from running
    on_ip_finished(incoming(ip_finished(request, "127.0.0.11")), database)
    done = update_completed(request, ok=False, outcome="aborted", not_run=["127.0.0.12", "127.0.0.21", "127.0.0.31"])
    on_update_completed(incoming(done), database)
    assert row(database, update_id).state == State.ABORTED


def test_abort_is_refused_before_the_update_is_requested_and_after_it_ended(database, config):
    update_id = service.start_update(
        database, config, StartUpdate(project="ssss", area="cn", update_type="hot_server", version="1"), "alice"
    )
    _refused(database, lambda: service.abort_update(database, update_id, "bob"),
             "cannot abort", "pull_requested", "update_requested")
    done_id, _ = _completed(database, config, version="2")
    _refused(database, lambda: service.abort_update(database, done_id, "bob"), "it is completed")


def test_abort_twice_is_refused_the_second_time(database, config):
    update_id, _ = _requested(database, config)
    service.abort_update(database, update_id, "bob")
    _refused(database, lambda: service.abort_update(database, update_id, "bob"), "it is aborting")


# --- confirm ------------------------------------------------------------------------------


def test_confirm_after_a_batch_awaiting_it_queues_the_next_batch_number(database, config):
    plan = RolloutPlanV2(batch_size=1, on_failure="confirm")
    update_id, request = _requested(database, config, push=PushUpdate(rollout=plan))
    on_ip_finished(incoming(ip_finished(request, "127.0.0.11", ok=False)), database)
    on_batch_finished(incoming(batch_finished(request, 1, 4, "await_confirm", ["127.0.0.11"], failed=1)), database)
    view = reads.get_update(database, update_id)
    assert view.state == State.AWAITING_CONFIRM
    assert view.last_batch is not None and view.last_batch["next"] == "await_confirm"
    assert "confirm to run batch 2" in (view.reason or "")

    view = service.confirm_batch(database, update_id, "bob")
    assert view.state == State.RUNNING
    go = outbox(database)[-1]
    assert go.type == "hotupdate.batch.confirmed.v1"
    assert go.data == {"batch": 2, "confirmed_by": "bob"}
    assert (go.updateid, go.causationid) == (update_id, request.id)
    _refused(database, lambda: service.confirm_batch(database, update_id, "bob"), "it is running", "awaiting_confirm")

    # a later failed batch waits again, and its go-ahead is for the batch after it
    on_batch_finished(incoming(batch_finished(request, 2, 4, "await_confirm", ["127.0.0.12"], failed=1)), database)
    service.confirm_batch(database, update_id, "alice")
    assert outbox(database)[-1].data == {"batch": 3, "confirmed_by": "alice"}


def test_confirm_is_refused_unless_the_latest_batch_awaits_it(database, config):
    plan = RolloutPlanV2(batch_size=1, on_failure="confirm")
    update_id, request = _requested(database, config, push=PushUpdate(rollout=plan))
    _refused(database, lambda: service.confirm_batch(database, update_id, "bob"),
             "cannot confirm", "update_requested", "awaiting_confirm")
    on_batch_finished(incoming(batch_finished(request, 1, 4, "continue", ["127.0.0.11"])), database)
    assert row(database, update_id).state == State.RUNNING
    _refused(database, lambda: service.confirm_batch(database, update_id, "bob"), "it is running")


def test_a_redelivered_older_batch_does_not_reopen_the_wait(database, config):
    plan = RolloutPlanV2(batch_size=1, on_failure="confirm")
    update_id, request = _requested(database, config, push=PushUpdate(rollout=plan))
    first = batch_finished(request, 1, 4, "await_confirm", ["127.0.0.11"], failed=1)
    on_batch_finished(incoming(first), database)
    service.confirm_batch(database, update_id, "bob")
    on_batch_finished(incoming(first, redelivered=True), database)
    assert row(database, update_id).state == State.RUNNING


def test_abort_while_awaiting_confirm_is_allowed(database, config):
    plan = RolloutPlanV2(batch_size=1, on_failure="confirm")
    update_id, request = _requested(database, config, push=PushUpdate(rollout=plan))
    on_batch_finished(incoming(batch_finished(request, 1, 4, "await_confirm", ["127.0.0.11"], failed=1)), database)
    assert service.abort_update(database, update_id, "bob").state == State.ABORTING
    _refused(database, lambda: service.confirm_batch(database, update_id, "bob"), "it is aborting")


# --- retry failed -------------------------------------------------------------------------


def _failed_with_one_bad_server(database: CmdbDatabase, config: HotupdateConfig) -> tuple[str, Envelope]:
    """127.0.0.11 all ok; on 127.0.0.12 qq_3 failed and qq_4 ok; 127.0.0.21 ok; 127.0.0.31 never ran."""
    update_id, request = _requested(database, config, push=PushUpdate(files=["ebin/role_server.beam"]))
    on_ip_finished(incoming(ip_finished(request, "127.0.0.11", offset=2)), database)
    on_ip_finished(incoming(ip_finished_servers(request, "127.0.0.12", {"qq_3": False, "qq_4": True}, 3)),
                   database)
    on_ip_finished(incoming(ip_finished(request, "127.0.0.21", offset=4)), database)
    done = update_completed(request, ok=False, outcome="stopped", not_run=["127.0.0.31"])
    on_update_completed(incoming(done), database)
    assert row(database, update_id).state == State.STOPPED
    return update_id, request


def test_retry_failed_targets_exactly_the_failed_and_not_run_servers(database, config):
    parent_id, request = _failed_with_one_bad_server(database, config)
    view = service.retry_failed(database, config, parent_id, "bob")
    assert (view.parent_id, view.relation, view.state, view.version) == (
        parent_id, "retry_failed", State.PULL_REQUESTED, "004200000"
    )
    assert view.update_targets == {"update_server_list": {"game": {"127.0.0.12": ["qq_3"]},
                                                          "cross_center": {"127.0.0.31": ["center_1"]}}}
    pull = outbox(database)[-1]
    assert (pull.type, pull.updateid, pull.data["requested_by"]) == ("hotupdate.pull.requested.v1", view.id, "bob")

    # pulled again (the ops manager keys files by update id): the CMDB pushes the same file itself
    on_files_pulled(incoming(files_pulled(pull)), database)
    push = outbox(database)[-1]
    assert push.type == "hotupdate.push.requested.v1"
    assert [f["file_name"] for f in push.data["files"]] == ["ebin/role_server.beam"]
    assert push.data["requested_by"] == "bob"
    assert row(database, view.id).state == State.PUSH_REQUESTED

    on_files_pushed(incoming(files_pushed(push)), database)
    retry = UpdateRequested.model_validate(outbox(database)[-1].data)
    assert retry.update_server_list == {"game": {"127.0.0.12": ["qq_3"]}, "cross_center": {"127.0.0.31": ["center_1"]}}
    assert (retry.parent_id, retry.relation) == (parent_id, "retry_failed")
    assert [f.file_name for f in retry.update_file_list] == ["ebin/role_server.beam"]
    assert retry.erlang_cmd_list == request.data["erlang_cmd_list"]


def test_retry_failed_of_a_hot_client_update_takes_the_failed_cdn_dirs(database, config):
    parent_id, request = _requested(database, config, update_type="hot_client", client_type=1)
    on_update_started(incoming(update_started(request)), database)
    on_cdn_dir_finished(incoming(cdn_dir_finished(request, "t1", ok=True, offset=2)), database)
    on_cdn_dir_finished(incoming(cdn_dir_finished(request, "s1", ok=False, offset=3)), database)
    on_update_completed(incoming(update_completed(request, ok=False)), database)
    view = service.retry_failed(database, config, parent_id, "bob")
    assert view.update_targets == {"data": [{"cdn_root_url": "res.ssss.chuangyunet.com", "cdn_dir": "s1"}]}
    assert view.client_type == 1


def test_retry_failed_is_refused_for_a_completed_or_running_update(database, config):
    done_id, _ = _completed(database, config)
    _refused(database, lambda: service.retry_failed(database, config, done_id, "bob"),
             "cannot retry-failed", "it is completed")
    running_id, _ = _requested(database, config, version="5")
    _refused(database, lambda: service.retry_failed(database, config, running_id, "bob"), "it is update_requested")


def test_a_retry_whose_files_changed_since_is_not_pushed_automatically(database, config):
    parent_id, _ = _failed_with_one_bad_server(database, config)
    view = service.retry_failed(database, config, parent_id, "bob")
    changed = [FileEntry(file_name="ebin/role_server.beam", file_md5="f" * 32, size=1)]
    on_files_pulled(incoming(files_pulled(outbox(database)[-1], changed)), database)
    saved = row(database, view.id)
    assert saved.state == State.PULLED
    assert "ebin/role_server.beam changed" in (saved.reason or "")
    assert all(e.type != "hotupdate.push.requested.v1" for e in outbox(database) if e.updateid == view.id)


# --- rollback -----------------------------------------------------------------------------


def test_rollback_applies_the_previous_completed_version_to_the_same_targets(database, config):
    old_files = [FileEntry(file_name="ebin/role_server.beam", file_md5="1" * 32, size=10)]
    old_id, _ = _completed(database, config, version="004100000", files=old_files)
    _failed_id, _ = _requested(database, config, version="004150000")  # never completed: not a candidate
    current_id, _ = _requested(database, config, version="004200000", push=PushUpdate(servers=["qq_1", "cross_1"]))
    done = update_completed(row_request := outbox(database)[-1], ok=True)
    for offset, ip in enumerate(("127.0.0.11", "127.0.0.21"), start=2):
        on_ip_finished(incoming(ip_finished(row_request, ip, offset=offset)), database)
    on_update_completed(incoming(done), database)
    assert row(database, current_id).state == State.COMPLETED

    view = service.roll_back(database, config, current_id, "bob")
    assert (view.parent_id, view.relation, view.version) == (current_id, "rollback", "004100000")
    assert view.update_targets == row(database, current_id).update_targets
    on_files_pulled(incoming(files_pulled(outbox(database)[-1], old_files)), database)
    on_files_pushed(incoming(files_pushed(outbox(database)[-1])), database)
    rollback = UpdateRequested.model_validate(outbox(database)[-1].data)
    assert (rollback.version, rollback.parent_id, rollback.relation) == ("004100000", current_id, "rollback")
    assert rollback.update_server_list == {"game": {"127.0.0.11": ["qq_1"]}, "cross": {"127.0.0.21": ["cross_1"]}}
    assert [f.model_dump() for f in rollback.update_file_list] == [f.model_dump() for f in old_files]
    assert old_id != view.id


def test_rollback_is_refused_when_no_earlier_version_completed(database, config):
    only_id, _ = _completed(database, config)
    _refused(database, lambda: service.roll_back(database, config, only_id, "bob"),
             "cannot rollback", "no earlier hot_server update of ssss/cn", "has completed")


def test_rollback_is_refused_while_the_update_runs(database, config):
    _completed(database, config, version="1")
    running_id, _ = _requested(database, config, version="2")
    _refused(database, lambda: service.roll_back(database, config, running_id, "bob"), "it is update_requested")


# --- stalls -------------------------------------------------------------------------------


def test_a_silent_running_update_gets_one_stall_naming_the_silent_ips(database, config):
    update_id, request = _requested(database, config)
    on_update_started(incoming(update_started(request)), database)
    on_ip_finished(incoming(ip_finished(request, "127.0.0.11")), database)
    last = as_utc(row(database, update_id).last_event_at)
    assert last is not None
    later = last + timedelta(seconds=1)
    assert report_stalls(database, 0.5, now=later) == [update_id]
    stalled = outbox(database)[-1]
    assert stalled.type == "hotupdate.update.stalled.v1"
    assert stalled.data["silent_targets"] == ["127.0.0.12", "127.0.0.21", "127.0.0.31"]
    assert stalled.data["stalled_after_seconds"] == 0.5
    assert (stalled.updateid, stalled.causationid) == (update_id, request.id)
    # once per silence period
    assert report_stalls(database, 0.5, now=later + timedelta(seconds=5)) == []
    assert len([e for e in outbox(database) if e.type == stalled.type]) == 1
    # an event starts a new period, which can stall again
    on_ip_finished(incoming(ip_finished(request, "127.0.0.12", offset=3)), database)
    moved = as_utc(row(database, update_id).last_event_at)
    assert moved is not None and moved > last
    newer = moved + timedelta(seconds=1)
    assert report_stalls(database, 0.5, now=newer) == [update_id]
    assert outbox(database)[-1].data["silent_targets"] == ["127.0.0.21", "127.0.0.31"]


def test_no_stall_before_the_silence_lasts_long_enough_nor_while_awaiting_confirm(database, config):
    update_id, request = _requested(database, config, push=PushUpdate(rollout=RolloutPlanV2(batch_size=1,
                                                                                          on_failure="confirm")))
    last = as_utc(row(database, update_id).last_event_at)
    assert last is not None
    assert report_stalls(database, 60, now=last + timedelta(seconds=30)) == []
    on_batch_finished(incoming(batch_finished(request, 1, 4, "await_confirm", ["127.0.0.11"], failed=1)), database)
    assert report_stalls(database, 60, now=last + timedelta(hours=1)) == []


def test_a_finishing_update_stalls_naming_the_targets_still_missing(database, config):
    update_id, request = _requested(database, config)
    on_ip_finished(incoming(ip_finished(request, "127.0.0.11")), database)
    on_update_completed(incoming(update_completed(request, ok=True)), database)
    assert row(database, update_id).state == State.FINISHING
    last = as_utc(row(database, update_id).last_event_at)
    assert last is not None
    later = last + timedelta(seconds=2)
    assert report_stalls(database, 1, now=later) == [update_id]
    assert outbox(database)[-1].data["silent_targets"] == ["127.0.0.12", "127.0.0.21", "127.0.0.31"]


# --- the HTTP API -------------------------------------------------------------------------


def test_actions_need_a_token(client, database, config):
    update_id, _ = _requested(database, config)
    before = len(outbox(database))
    for action in ("abort", "confirm", "retry-failed", "rollback"):
        response = client.post(f"/api/updates/{update_id}/{action}")
        assert response.status_code == 401, action
    assert len(outbox(database)) == before


def test_refused_actions_are_409_with_the_reason_and_queue_nothing(client, database, config):
    update_id, _ = _completed(database, config)
    before = len(outbox(database))
    expected = {
        "abort": "cannot abort update", "confirm": "cannot confirm update",
        "retry-failed": "cannot retry-failed update", "rollback": "no earlier hot_server update",
    }
    for action, words in expected.items():
        response = client.post(f"/api/updates/{update_id}/{action}", headers=auth("bob"))
        assert response.status_code == 409, (action, response.text)
        assert words in response.json()["detail"]
    assert len(outbox(database)) == before
    assert client.post("/api/updates/nope/abort", headers=auth()).status_code == 404


def test_api_abort_confirm_and_retry_record_the_operator(client, database, config):
    plan = {"batch_size": 1, "on_failure": "confirm"}
    update_id = client.post("/api/updates", json={"project": "ssss", "area": "大陆", "update_type": "hot_server",
                                                  "version": "7"}, headers=auth()).json()["id"]
    on_files_pulled(incoming(files_pulled(outbox(database)[-1])), database)
    response = client.post(f"/api/updates/{update_id}/push", json={"rollout": plan}, headers=auth("bob"))
    assert response.status_code == 200, response.text
    assert response.json()["rollout"]["on_failure"] == "confirm"
    on_files_pushed(incoming(files_pushed(outbox(database)[-1])), database)
    request = outbox(database)[-1]
    assert request.data["rollout"]["batch_size"] == 1
    on_batch_finished(incoming(batch_finished(request, 1, 4, "await_confirm", ["127.0.0.11"], failed=1)), database)
    response = client.post(f"/api/updates/{update_id}/confirm", headers=auth("bob"))
    assert response.status_code == 200 and response.json()["state"] == "running"
    assert outbox(database)[-1].data == {"batch": 2, "confirmed_by": "bob"}
    response = client.post(f"/api/updates/{update_id}/abort", json={"reason": "enough"}, headers=auth("alice"))
    assert response.status_code == 200 and response.json()["state"] == "aborting"
    assert outbox(database)[-1].data == {"requested_by": "alice", "reason": "enough"}
    bad_plan = client.post(f"/api/updates/{update_id}/retry-failed", json={"rollout": {"batch_size": 0}},
                           headers=auth())
    assert bad_plan.status_code == 422
