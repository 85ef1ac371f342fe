"""The CMDB's process manager on SQLite and PostgreSQL, fed hand-built envelopes as the bus would deliver them."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import update as sql_update

from bus.consumer import Reject
from bus.contract.envelope import Envelope, derived_event_id
from bus.contract.events import AnalysisVerdict, PushRequested, UpdateRequested, UpdateStarted
from bus.contract.registry import make_envelope
from domain.config import HotupdateConfig
from producers.cmdb import reads, service
from producers.cmdb.analysis import on_analysis_verdict
from producers.cmdb.database import CmdbDatabase
from producers.cmdb.models import HotUpdate, OutboxMessage
from producers.cmdb.process_manager import (
    HANDLERS,
    on_batch_finished,
    on_cdn_dir_finished,
    on_files_pulled,
    on_files_pushed,
    on_ip_finished,
    on_pull_failed,
    on_push_failed,
    on_update_completed,
    on_update_started,
)
from producers.cmdb.service import PushUpdate, StartUpdate
from producers.cmdb.states import State
from tests.cmdb_support import (
    FILES,
    batch_finished,
    cdn_dir_finished,
    files_pulled,
    files_pushed,
    incoming,
    ip_finished,
    outbox,
    pull_failed,
    push_failed,
    row,
    update_completed,
    update_started,
)


def _started(database: CmdbDatabase, config: HotupdateConfig, **overrides: Any) -> tuple[str, Envelope]:
    fields = {"project": "ssss", "area": "大陆", "update_type": "hot_server", "version": "004200000", **overrides}
    update_id = service.start_update(database, config, StartUpdate(**fields), requested_by="alice")
    return update_id, outbox(database)[-1]


def _pushed(
    database: CmdbDatabase, config: HotupdateConfig, push: PushUpdate | None = None, **overrides: Any
) -> tuple[str, Envelope]:
    """An update whose push was requested; returns (id, the PushRequested envelope)."""
    update_id, pull = _started(database, config, **overrides)
    on_files_pulled(incoming(files_pulled(pull)), database)
    service.push_update(database, config, update_id, push or PushUpdate(), requested_by="bob")
    return update_id, outbox(database)[-1]


def _requested(database: CmdbDatabase, config: HotupdateConfig, **overrides: Any) -> tuple[str, Envelope]:
    """An update whose files were pushed; returns (id, the UpdateRequested envelope)."""
    update_id, push = _pushed(database, config, **overrides)
    on_files_pushed(incoming(files_pushed(push)), database)
    return update_id, outbox(database)[-1]


def test_the_cmdb_has_one_handler_per_event_it_reacts_to():
    assert sorted(e.event_name for e in HANDLERS) == sorted([
        "files.pulled", "pull.failed", "files.pushed", "push.failed",
        "update.started", "ip.finished", "cdn_dir.finished", "batch.finished", "update.completed",
        "release.announced", "analysis.verdict",
    ])


def test_files_pulled_records_the_file_list(database, config):
    update_id, pull = _started(database, config)
    pulled = files_pulled(pull)
    on_files_pulled(incoming(pulled), database)
    saved = row(database, update_id)
    assert saved.state == State.PULLED
    assert saved.files == [f.model_dump() for f in FILES]
    assert saved.pulled_event_id == pulled.id
    assert saved.backup_dir == pulled.data["backup_dir"]
    assert len(outbox(database)) == 1  # nothing is published until the operator pushes


def test_redelivered_files_pulled_changes_nothing(database, config):
    update_id, pull = _started(database, config)
    pulled = files_pulled(pull)
    on_files_pulled(incoming(pulled), database)
    before = row(database, update_id)
    on_files_pulled(incoming(pulled, redelivered=True), database)
    after = row(database, update_id)
    assert (after.state, after.pulled_at, after.files) == (before.state, before.pulled_at, before.files)


def test_pull_failed_stops_the_update_with_the_reason(database, config):
    update_id, pull = _started(database, config, version="004200001")
    on_pull_failed(incoming(pull_failed(pull)), database)
    saved = row(database, update_id)
    assert saved.state == State.PULL_FAILED
    assert saved.reason is not None and saved.reason.startswith("pull failed (version_missing): ")
    assert len(outbox(database)) == 1


def test_files_pushed_queues_update_requested_with_the_inventory_servers(database, config):
    update_id, push = _pushed(database, config)
    pushed = files_pushed(push)
    on_files_pushed(incoming(pushed), database)
    request = outbox(database)[-1]
    assert request.type == UpdateRequested.type_name()
    assert request.id == derived_event_id(pushed.id, request.type)
    assert (request.causationid, request.sequence, request.correlationid) == (pushed.id, pushed.sequence + 1,
                                                                              update_id)
    assert (request.project, request.area, request.source) == ("ssss", "cn", "hotupdate/cmdb")
    assert request.data == {
        "update_type": "hot_server",
        "version": "004200000",
        "ops_manager": "ops1",
        "update_file_list": [f.model_dump() for f in FILES],
        "requested_by": "bob",
        "update_server_list": {
            "game": {"127.0.0.11": ["qq_1", "qq_2"], "127.0.0.12": ["qq_3", "qq_4"]},
            "cross": {"127.0.0.21": ["cross_1"]},
            "cross_center": {"127.0.0.31": ["center_1"]},
        },
        "erlang_cmd_list": ["user_default:reload()."],
    }
    saved = row(database, update_id)
    assert saved.state == State.UPDATE_REQUESTED
    assert saved.update_event_id == request.id
    assert saved.pushed_at is not None


def test_redelivered_files_pushed_queues_update_requested_once(database, config):
    _, push = _pushed(database, config)
    pushed = files_pushed(push)
    on_files_pushed(incoming(pushed), database)
    on_files_pushed(incoming(pushed, redelivered=True), database)
    assert [e.type for e in outbox(database)].count(UpdateRequested.type_name()) == 1


def test_update_request_uses_the_narrowed_servers_and_the_chosen_files(database, config):
    push = PushUpdate(files=["config/skill.config"], servers=["qq_1", "center_1"])
    _, pushed = _pushed(database, config, push=push)
    on_files_pushed(incoming(files_pushed(pushed)), database)
    request = outbox(database)[-1]
    assert request.data["update_server_list"] == {"game": {"127.0.0.11": ["qq_1"]},
                                                  "cross_center": {"127.0.0.31": ["center_1"]}}
    assert [f["file_name"] for f in request.data["update_file_list"]] == ["config/skill.config"]


def test_hot_client_update_request_carries_cdn_dirs_and_client_type(database, config):
    _, request = _requested(database, config, update_type="hot_client", client_type=1)
    assert request.data["client_type"] == 1
    assert request.data["data"] == [{"cdn_root_url": "res.ssss.chuangyunet.com", "cdn_dir": "t1"},
                                    {"cdn_root_url": "res.ssss.chuangyunet.com", "cdn_dir": "s1"}]
    assert "update_server_list" not in request.data
    assert request.data["erlang_cmd_list"] == []


def test_push_failed_stops_the_update_and_requests_nothing(database, config):
    update_id, push = _pushed(database, config)
    on_push_failed(incoming(push_failed(push)), database)
    saved = row(database, update_id)
    assert saved.state == State.PUSH_FAILED
    assert "failed targets: ssss_cn" in (saved.reason or "")
    assert "auth failed" in (saved.reason or "")
    assert [e.type for e in outbox(database)][-1] == "hotupdate.push.requested.v1"


def test_a_failed_push_can_be_pushed_again_and_the_old_answer_is_ignored(database, config):
    update_id, first = _pushed(database, config)
    on_push_failed(incoming(push_failed(first)), database)
    service.push_update(database, config, update_id, PushUpdate(), requested_by="bob")
    second = outbox(database)[-1]
    assert second.id != first.id and second.sequence > first.sequence
    on_files_pushed(incoming(files_pushed(first)), database)  # a late answer to the first push
    assert row(database, update_id).state == State.PUSH_REQUESTED
    on_files_pushed(incoming(files_pushed(second)), database)
    assert row(database, update_id).state == State.UPDATE_REQUESTED


def test_execution_events_move_the_update_to_running_then_completed(database, config):
    update_id, request = _requested(database, config)
    on_update_started(incoming(update_started(request)), database)
    assert row(database, update_id).state == State.RUNNING
    for offset, ip in enumerate(("127.0.0.11", "127.0.0.12", "127.0.0.21", "127.0.0.31"), start=2):
        on_ip_finished(incoming(ip_finished(request, ip, offset=offset)), database)
    on_update_completed(incoming(update_completed(request)), database)
    saved = row(database, update_id)
    assert saved.state == State.COMPLETED
    assert saved.final_data == "全部完成"
    assert saved.finished_at is not None
    view = reads.get_update(database, update_id)
    assert [(r.target, r.ok) for r in view.results] == [
        ("127.0.0.11", True), ("127.0.0.12", True), ("127.0.0.21", True), ("127.0.0.31", True)
    ]


def test_failed_ip_and_failed_completion_mark_the_update_failed(database, config):
    update_id, request = _requested(database, config)
    on_ip_finished(incoming(ip_finished(request, "127.0.0.12", ok=False)), database)
    assert row(database, update_id).state == State.RUNNING  # a result implies the update started
    for offset, ip in enumerate(("127.0.0.11", "127.0.0.21", "127.0.0.31"), start=3):
        on_ip_finished(incoming(ip_finished(request, ip, offset=offset)), database)
    on_update_completed(incoming(update_completed(request, ok=False)), database)
    saved = row(database, update_id)
    assert saved.state == State.FAILED
    assert saved.reason == "部分失败 (1 failed, 3 ok)"
    result = next(r for r in reads.get_update(database, update_id).results if r.target == "127.0.0.12")
    assert (result.kind, result.target, result.ok) == ("ip", "127.0.0.12", False)
    assert result.detail["update_data"]["qq_3"] == {"data": "更新失败,不执行erl命令", "status": False}


def test_a_completion_before_some_results_says_what_is_missing_until_they_arrive(database, config):
    update_id, request = _requested(database, config)
    on_ip_finished(incoming(ip_finished(request, "127.0.0.12", ok=False)), database)
    on_update_completed(incoming(update_completed(request, ok=False)), database)
    view = reads.get_update(database, update_id)
    assert view.state == State.FINISHING
    assert view.missing_targets == ["127.0.0.11", "127.0.0.21", "127.0.0.31"]
    assert "no result yet from 3 target(s): 127.0.0.11, 127.0.0.21, 127.0.0.31" in (view.reason or "")
    for offset, ip in enumerate(("127.0.0.11", "127.0.0.21"), start=3):
        on_ip_finished(incoming(ip_finished(request, ip, offset=offset)), database)
    assert reads.get_update(database, update_id).missing_targets == ["127.0.0.31"]
    on_ip_finished(incoming(ip_finished(request, "127.0.0.31", offset=5)), database)
    view = reads.get_update(database, update_id)
    assert (view.state, view.missing_targets, view.reason) == (State.FAILED, [], "部分失败 (1 failed, 3 ok)")
    assert view.finished_at is not None


def test_an_aborted_update_is_aborted_and_names_what_did_not_run(database, config):
    update_id, request = _requested(database, config)
    on_ip_finished(incoming(ip_finished(request, "127.0.0.11")), database)
    completed = update_completed(request, ok=False, outcome="aborted",
                                 not_run=["127.0.0.12", "127.0.0.21", "127.0.0.31"])
    on_update_completed(incoming(completed), database)
    saved = row(database, update_id)
    assert saved.state == State.ABORTED
    assert saved.outcome == "aborted"
    assert saved.reason is not None
    assert saved.reason.startswith("aborted: ")
    assert saved.reason.endswith("not run: 127.0.0.12, 127.0.0.21, 127.0.0.31")


def test_a_stopped_rollout_is_stopped(database, config):
    update_id, request = _requested(database, config)
    on_ip_finished(incoming(ip_finished(request, "127.0.0.11", ok=False)), database)
    completed = update_completed(request, ok=False, outcome="stopped",
                                 not_run=["127.0.0.12", "127.0.0.21", "127.0.0.31"])
    on_update_completed(incoming(completed), database)
    assert row(database, update_id).state == State.STOPPED


def test_a_redelivered_ip_result_is_recorded_once(database, config):
    update_id, request = _requested(database, config)
    result = ip_finished(request, "127.0.0.11")
    on_ip_finished(incoming(result), database)
    on_ip_finished(incoming(result, redelivered=True), database)
    assert len(reads.get_update(database, update_id).results) == 1


def test_a_result_arriving_after_completion_is_still_recorded(database, config):
    update_id, request = _requested(database, config, update_type="hot_client", client_type=0)
    on_update_completed(incoming(update_completed(request)), database)
    on_cdn_dir_finished(incoming(cdn_dir_finished(request, "s1")), database)
    on_update_started(incoming(update_started(request)), database)  # late: changes nothing
    view = reads.get_update(database, update_id)
    assert view.state == State.FINISHING
    assert view.missing_targets == ["res.ssss.chuangyunet.com/t1"]
    on_cdn_dir_finished(incoming(cdn_dir_finished(request, "t1", offset=3)), database)
    view = reads.get_update(database, update_id)
    assert view.state == State.COMPLETED
    assert [(r.kind, r.target) for r in view.results] == [
        ("cdn_dir", "res.ssss.chuangyunet.com/s1"), ("cdn_dir", "res.ssss.chuangyunet.com/t1")
    ]


def test_events_for_an_unknown_update_are_ignored(database, config):
    stray = make_envelope(
        UpdateStarted(update_type="hot_server", version="1", ops_manager="ops1"),
        source="elsewhere", updateid="not-ours", project="ssss", area="cn",
    )
    on_update_started(incoming(stray), database)
    assert outbox(database) == []


def test_an_event_that_answers_no_request_of_the_cmdb_is_refused_and_changes_nothing(database, config):
    update_id, _ = _started(database, config)
    fake_push = files_pushed(make_envelope(
        PushRequested(
            update_type="hot_server", version="004200000", files=FILES, requested_by="eve",
            targets=[{"name": "x", "ip": "127.0.0.1", "port": 1, "module": "m", "user": "u"}],
        ),
        source="elsewhere", updateid=update_id, project="ssss", area="cn",
    ))
    with pytest.raises(Reject, match=r"^chain: .* does not answer a push requested the CMDB sent"):
        on_files_pushed(incoming(fake_push), database)
    assert row(database, update_id).state == State.PULL_REQUESTED
    assert len(outbox(database)) == 1


def test_an_update_awaiting_analysis_says_so_and_shows_the_verdict_on_its_batch(database, config):
    update_id, request = _requested(database, config)
    on_batch_finished(incoming(batch_finished(request, 1, 2, "await_analysis", ["127.0.0.11"])), database)
    assert "waiting for an analysis verdict before batch 2" in (row(database, update_id).reason or "")
    verdict = make_envelope(
        AnalysisVerdict(batch=1, verdict="fail", reason="error rate 4.2%", link="https://grafana.example.com/d/x",
                        analysed_by="ssss-monitor"),
        source="monitoring", updateid=update_id, project="ssss", area="cn")
    on_analysis_verdict(incoming(verdict), database)
    on_analysis_verdict(incoming(make_envelope(
        AnalysisVerdict(batch=1, verdict="pass", analysed_by="other"), source="monitoring", updateid=update_id,
        project="ssss", area="cn")), database)  # the first verdict counts
    stored = row(database, update_id)
    assert stored.last_batch is not None
    assert stored.last_batch["analysis"]["verdict"] == "fail"
    assert stored.last_batch["analysis"]["link"] == "https://grafana.example.com/d/x"
    assert stored.reason == "analysis of batch 1 failed (ssss-monitor): error rate 4.2%"


def test_a_result_answering_a_request_queued_before_an_upgrade_is_still_accepted(database, config):
    """A repeated push across an upgrade: the first request went out as update.requested v2, the current
    one is newer; a result answering the first still chains back to the CMDB's own request."""
    update_id, request = _requested(database, config)
    with database.transaction() as session:
        session.execute(sql_update(OutboxMessage).where(OutboxMessage.event_id == request.id)
                        .values(event_type="hotupdate.update.requested.v2"))
        session.execute(sql_update(HotUpdate).where(HotUpdate.id == update_id)
                        .values(update_event_id="a-later-request"))
    on_ip_finished(incoming(ip_finished(request, "127.0.0.11")), database)  # no Reject
    assert row(database, update_id).state == State.RUNNING
