"""The trigger table, the notification body, what an HTTP answer means, the backoff, and the queue's bindings."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import get_args

import pytest

from bus.contract.events import CATALOGUE, PullFailed, PushFailed, RsyncTargetResult, UpdateCompleted, UpdateStalled
from bus.contract.registry import make_envelope
from consumers.notifier.payload import notification_for
from consumers.notifier.sending import backoff_seconds, classify
from consumers.notifier.service import notifier_bindings, service_name
from consumers.notifier.triggers import SUMMARY_LIMIT, TRIGGERS, Trigger
from domain.config import NotificationKind, parse_config


def completed(final_result: bool, final_data: str = "全部完成") -> UpdateCompleted:
    return UpdateCompleted(update_type="hot_server", version="004200000", final_result=final_result,
                           final_data=final_data)


def pull_failed() -> PullFailed:
    return PullFailed(update_type="hot_client", version="7", reason="empty", detail="reloadfiles is empty")


def push_failed() -> PushFailed:
    target = RsyncTargetResult(name="ssss_cn", ip="127.0.0.1", port=873, module="m", user="u", ok=False)
    return PushFailed(update_type="hot_server", version="7", targets=[target], failed_targets=["ssss_cn"],
                      reason="rsync exit 5: auth failed")


def test_a_successful_completion_notifies_completed_and_an_unsuccessful_one_failed():
    trigger = TRIGGERS[UpdateCompleted]
    assert trigger.classify(completed(True)) == "completed"
    assert trigger.classify(completed(False)) == "failed"
    assert trigger.kinds == {"completed", "failed", "aborted"}


@pytest.mark.parametrize(("outcome", "kind", "words"), [
    ("failed", "failed", "failed"), ("stopped", "failed", "stopped"), ("aborted", "aborted", "aborted"),
])
def test_a_completion_notifies_by_its_typed_outcome(outcome, kind, words):
    event = UpdateCompleted(update_type="hot_server", version="9", final_result=False, final_data="see not_run",
                            ok_count=1, failed_count=0, outcome=outcome, not_run=["10.1.1.2", "10.1.1.3"])
    trigger = TRIGGERS[UpdateCompleted]
    assert trigger.classify(event) == kind
    assert trigger.summary(event) == f"hot_server 9 {words} (1 ok, 0 failed), 2 not run: see not_run"


def test_a_succeeded_outcome_notifies_completed():
    event = UpdateCompleted(update_type="hot_client", version="9", final_result=True, final_data="ok",
                            outcome="succeeded", ok_count=2)
    assert TRIGGERS[UpdateCompleted].classify(event) == "completed"
    assert TRIGGERS[UpdateCompleted].summary(event) == "hot_client 9 completed (2 ok, 0 failed): ok"


def test_a_stalled_update_notifies_stalled_naming_the_silent_targets():
    event = UpdateStalled(silent_targets=["10.0.0.5", "10.0.0.7/cross"], stalled_after_seconds=300,
                          last_event_at=datetime(2026, 11, 24, 10, 0, tzinfo=UTC))
    trigger = TRIGGERS[UpdateStalled]
    assert trigger.kinds == {"stalled"}
    assert trigger.classify(event) == "stalled"
    assert trigger.summary(event) == (
        "stalled: no event for 300s (last at 2026-11-24T10:00:00+00:00); 2 silent: 10.0.0.5, 10.0.0.7/cross"
    )


def test_failed_pulls_and_pushes_notify_failed_with_the_reason():
    assert TRIGGERS[PullFailed].classify(pull_failed()) == "failed"
    assert TRIGGERS[PullFailed].summary(pull_failed()) == "pull of hot_client 7 failed (empty): reloadfiles is empty"
    assert TRIGGERS[PushFailed].classify(push_failed()) == "failed"
    assert TRIGGERS[PushFailed].summary(push_failed()) == (
        "push of hot_server 7 failed to ssss_cn: rsync exit 5: auth failed"
    )


def test_every_trigger_is_a_catalogue_event_with_known_kinds():
    assert set(TRIGGERS) <= set(CATALOGUE)
    for trigger in TRIGGERS.values():
        assert trigger.kinds and trigger.kinds <= set(get_args(NotificationKind))


def test_a_new_row_is_one_line_for_an_event_that_always_means_one_kind():
    row: Trigger[PullFailed] = Trigger.always("stalled", lambda e: f"silent: {e.detail}")
    assert row.kinds == {"stalled"}
    assert row.classify(pull_failed()) == "stalled"
    assert row.summary(pull_failed()) == "silent: reloadfiles is empty"


def test_a_summary_is_one_bounded_line():
    summary = TRIGGERS[UpdateCompleted].summary(completed(False, "line one\nline two\t" + "x" * 2000))
    assert "\n" not in summary and "line one line two" in summary
    assert len(summary) == SUMMARY_LIMIT and summary.endswith("…")


def test_the_body_names_the_update_and_carries_the_event_as_canonical_json():
    env = make_envelope(completed(True), source="tests", updateid="u-1", project="ssss", area="cn")
    notification = notification_for(env, completed(True), TRIGGERS[UpdateCompleted])
    body = notification.body()
    decoded = json.loads(body)
    assert decoded == {
        "notification_version": 1, "kind": "completed", "update_id": "u-1", "project": "ssss", "area": "cn",
        "update_type": "hot_server", "version": "004200000", "summary": "hot_server 004200000 completed: 全部完成",
        "occurred_at": env.time.isoformat().replace("+00:00", "Z"), "event": json.loads(env.to_bytes()),
    }
    assert body == json.dumps(decoded, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    assert notification_for(env, completed(True), TRIGGERS[UpdateCompleted]).body() == body


@pytest.mark.parametrize(("status", "outcome"), [
    (200, "delivered"), (202, "delivered"), (204, "delivered"),
    (408, "retry"), (429, "retry"), (500, "retry"), (502, "retry"), (503, "retry"),
    (400, "rejected"), (401, "rejected"), (404, "rejected"), (410, "rejected"), (301, "rejected"),
])
def test_http_status_decides_delivered_retry_or_rejected(status, outcome):
    assert classify(status) == outcome


def test_backoff_doubles_up_to_the_ceiling_and_honours_retry_after():
    assert [backoff_seconds(n, 2, 60) for n in (1, 2, 3, 4, 5, 6, 7)] == [2, 4, 8, 16, 32, 60, 60]
    assert backoff_seconds(1, 2, 60, retry_after=30) == 30
    assert backoff_seconds(1, 2, 60, retry_after=3600) == 60
    assert backoff_seconds(4, 2, 60, retry_after=1) == 16


def _config(webhooks: dict[str, list[dict[str, object]]]):
    areas = {"hot_server": {"大陆": ["cn"]}}
    inventory = {"cn": {"servers": {"game": {"127.0.0.1": ["qq_1"]}}}}
    projects = {p: {"areas": areas, "inventory": inventory, "webhooks": hooks} for p, hooks in webhooks.items()}
    return parse_config({"projects": projects}, Path("/etc/hotupdate/config.yaml"))


def test_the_queue_binds_only_projects_with_webhooks_and_only_the_events_they_want():
    config = _config({
        "ssss": [{"url": "https://a.example.com/h", "secret": "0123456789abcdef"}],
        "snqxz": [{"url": "https://b.example.com/h", "secret": "0123456789abcdef", "events": ["completed"]}],
        "jyjh": [],
        "csxy": [{"url": "https://c.example.com/h", "secret": "0123456789abcdef", "events": ["stalled"]}],
    })
    assert set(notifier_bindings(config)) == {
        "ssss.*.update.completed.*", "ssss.*.pull.failed.*", "ssss.*.push.failed.*", "ssss.*.update.stalled.*",
        "snqxz.*.update.completed.*",
        "csxy.*.update.stalled.*",
    }


def test_the_usual_notifier_consumes_queue_notifier_and_another_one_its_own():
    assert service_name() == "notifier"
    assert service_name("staging") == "notifier.staging"
