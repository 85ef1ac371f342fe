"""The notifier end to end: events on a real broker, webhooks on a real local HTTP receiver, state in SQLite."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from bus.contract.envelope import Envelope
from bus.contract.events import Event, PullFailed, PushFailed, RsyncTargetResult, UpdateCompleted
from bus.contract.registry import make_envelope
from bus.publisher import AsyncPublisher
from cli import notifier_cmd
from consumers.notifier.service import NotifierService, build_service
from consumers.notifier.store import DeliveryRecord, DeliveryStore
from domain.config import HotupdateConfig, parse_config
from tests.webhook_receiver import WebhookReceiver, closed_port_url

pytestmark = [pytest.mark.rabbit]
ROOT = Path(__file__).resolve().parents[2]

SECRET = b"s3cret-shared-with-the-receiver"
FAST = {"backoff_seconds": 0.05, "max_backoff_seconds": 0.2, "timeout_seconds": 2, "max_attempts": 3}


def config_for(amqp_url: str, tmp_path: Path, webhooks: dict[str, list[dict[str, Any]]]) -> HotupdateConfig:
    areas = {"hot_server": {"大陆": ["cn"]}, "hot_client": {"大陆": ["cn"]}}
    inventory = {"cn": {"servers": {"game": {"127.0.0.1": ["qq_1"]}},
                        "cdn": [{"cdn_root_url": "res.ssss.chuangyunet.com", "cdn_dir": "t1"}]}}
    projects = {p: {"areas": areas, "inventory": inventory,
                    "webhooks": [{"secret": SECRET.decode(), **FAST, **w} for w in hooks]}
                for p, hooks in webhooks.items()}
    raw = {"amqp_url": amqp_url, "broker": {"shared_user": "guest"}, "projects": projects,
           "notifier": {"state_url": f"sqlite:///{tmp_path / 'notifier.db'}"}}
    return parse_config(raw, tmp_path / "config.yaml")


def completed(final_result: bool = True) -> UpdateCompleted:
    return UpdateCompleted(update_type="hot_server", version="004200000", final_result=final_result,
                           final_data="全部完成" if final_result else "qq_2 失败", ok_count=2,
                           failed_count=0 if final_result else 1)


def envelope(event: Event, project: str = "ssss") -> Envelope:
    return make_envelope(event, source="tests", updateid=str(uuid.uuid4()), project=project, area="cn")


async def publish(amqp_url: str, *envelopes: Envelope) -> None:
    async with AsyncPublisher(amqp_url) as publisher:
        for env in envelopes:
            await publisher.publish(env)


async def running(config: HotupdateConfig) -> NotifierService:
    service = build_service(config)
    await service.start()
    return service


def store_of(config: HotupdateConfig) -> DeliveryStore:
    return DeliveryStore(config.notifier.state_url, migrate=False)


async def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not true within {timeout}s"
        await asyncio.sleep(0.02)


def only_delivery(store: DeliveryStore) -> DeliveryRecord:
    (record,) = store.deliveries()
    return record


async def test_completed_update_posts_one_signed_notification(amqp_url, tmp_path):
    with WebhookReceiver(SECRET) as hook:
        config = config_for(amqp_url, tmp_path, {"ssss": [{"url": hook.url}]})
        service = await running(config)
        store = store_of(config)
        try:
            env = envelope(completed())
            await publish(amqp_url, env)
            (call,) = await hook.wait_for(1)
            await eventually(lambda: only_delivery(store).status == "delivered")
        finally:
            await service.stop()

    assert call.verified and call.answered == 200
    assert call.headers["x-hotupdate-event-id"] == env.id
    assert call.headers["content-type"] == "application/json"
    uuid.UUID(call.headers["x-hotupdate-delivery"])
    body = json.loads(call.body)
    assert {k: body[k] for k in ("kind", "update_id", "project", "area", "update_type", "version")} == {
        "kind": "completed", "update_id": env.updateid, "project": "ssss", "area": "cn",
        "update_type": "hot_server", "version": "004200000",
    }
    assert body["summary"] == "hot_server 004200000 completed (2 ok, 0 failed): 全部完成"
    assert body["event"]["id"] == env.id and body["event"]["data"]["final_result"] is True
    record = only_delivery(store)
    assert (record.attempts, record.last_status_code, record.kind) == (1, 200, "completed")


async def test_each_webhook_gets_only_the_kinds_it_asked_for(amqp_url, tmp_path):
    with WebhookReceiver(SECRET) as everything, WebhookReceiver(SECRET) as failures:
        config = config_for(amqp_url, tmp_path, {"ssss": [
            {"url": everything.url}, {"url": failures.url, "events": ["failed"]},
        ]})
        service = await running(config)
        try:
            push_failed = PushFailed(
                update_type="hot_client", version="7", reason="rsync exit 10",
                targets=[RsyncTargetResult(name="t1", ip="127.0.0.1", port=873, module="m", user="u", ok=False)],
                failed_targets=["t1"],
            )
            pull_failed = PullFailed(update_type="hot_server", version="8", reason="version_missing",
                                     detail="no such directory")
            await publish(amqp_url, envelope(completed(True)), envelope(completed(False)), envelope(push_failed),
                          envelope(pull_failed))
            await everything.wait_for(4)
            await failures.wait_for(3)
            await asyncio.sleep(0.3)  # nothing more arrives
        finally:
            await service.stop()

    kinds = sorted(json.loads(c.body)["kind"] for c in everything.calls)
    assert kinds == ["completed", "failed", "failed", "failed"]
    summaries = sorted(json.loads(c.body)["summary"] for c in failures.calls)
    assert summaries == [
        "hot_server 004200000 failed (2 ok, 1 failed): qq_2 失败",
        "pull of hot_server 8 failed (version_missing): no such directory",
        "push of hot_client 7 failed to t1: rsync exit 10",
    ]
    assert all(c.verified for c in everything.calls + failures.calls)


async def test_server_errors_are_retried_until_delivered_on_the_third_attempt(amqp_url, tmp_path):
    with WebhookReceiver(SECRET) as hook:
        hook.fail_next(2, status=500)
        config = config_for(amqp_url, tmp_path, {"ssss": [{"url": hook.url, "max_attempts": 5}]})
        service = await running(config)
        store = store_of(config)
        try:
            env = envelope(completed())
            await publish(amqp_url, env)
            calls = await hook.wait_for(3)
            await eventually(lambda: only_delivery(store).status == "delivered")
        finally:
            await service.stop()

    assert [c.answered for c in calls] == [500, 500, 200]
    assert all(c.verified for c in calls)
    assert len({c.body for c in calls}) == 1, "every attempt sends the same body"
    assert len({c.headers["x-hotupdate-delivery"] for c in calls}) == 3, "each attempt has its own delivery id"
    record = only_delivery(store)
    attempts = store.attempts(record.id)
    assert [(a.attempt, a.status_code, a.outcome) for a in attempts] == [
        (1, 500, "retry"), (2, 500, "retry"), (3, 200, "delivered"),
    ]
    assert "HTTP 500" in attempts[0].error and attempts[2].error == ""
    assert [a.delivery_uuid for a in attempts] == [c.headers["x-hotupdate-delivery"] for c in calls]
    assert (record.attempts, record.last_status_code) == (3, 200)


async def test_client_error_is_not_retried_and_is_recorded_as_failed(amqp_url, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="consumers.notifier")
    with WebhookReceiver(SECRET) as hook:
        hook.always(400)
        config = config_for(amqp_url, tmp_path, {"ssss": [{"url": hook.url, "max_attempts": 5}]})
        service = await running(config)
        store = store_of(config)
        try:
            await publish(amqp_url, envelope(completed()))
            await hook.wait_for(1)
            await eventually(lambda: only_delivery(store).status == "failed")
            await asyncio.sleep(0.4)  # several backoffs' worth: no second call comes
        finally:
            await service.stop()

    assert len(hook.calls) == 1
    record = only_delivery(store)
    assert (record.attempts, record.last_status_code) == (1, 400)
    assert record.last_error.startswith("HTTP 400") and "no thanks" in record.last_error
    assert [a.outcome for a in store.attempts(record.id)] == ["rejected"]
    assert any("refused" in r.getMessage() and "not retrying" in r.getMessage() for r in caplog.records)


async def test_unreachable_webhook_exhausts_its_attempts_and_the_cli_lists_the_failure(amqp_url, tmp_path, caplog,
                                                                                        capsys):
    caplog.set_level(logging.WARNING, logger="consumers.notifier")
    config = config_for(amqp_url, tmp_path, {"ssss": [{"url": closed_port_url(), "max_attempts": 3}]})
    service = await running(config)
    store = store_of(config)
    try:
        env = envelope(completed(False))
        await publish(amqp_url, env)
        await eventually(lambda: len(store.deliveries()) == 1 and only_delivery(store).status == "failed")
    finally:
        await service.stop()

    record = only_delivery(store)
    attempts = store.attempts(record.id)
    assert [(a.attempt, a.status_code, a.outcome) for a in attempts] == [
        (1, None, "retry"), (2, None, "retry"), (3, None, "exhausted"),
    ]
    assert all("ConnectError" in a.error for a in attempts)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sum("retrying in" in w for w in warnings) == 2
    assert any("no attempts left, giving up" in w and env.id in w for w in warnings)

    parser = argparse.ArgumentParser()
    notifier_cmd.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["notifier", "deliveries", "--state-url", config.notifier.state_url, "--failed",
                              "--attempts"])
    capsys.readouterr()
    assert args.func(args) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("ID\tCREATED\tSTATUS")
    row = out[1].split("\t")
    assert row[2:8] == ["failed", "3", "failed", "ssss", "cn", env.updateid]
    assert row[8].startswith("http://127.0.0.1:") and "/hooks/down" not in row[8]
    assert "ConnectError" in row[9]
    assert len([line for line in out if "exhausted" in line or "retry" in line]) == 3


async def test_a_redelivered_event_does_not_call_the_webhook_twice(amqp_url, tmp_path):
    with WebhookReceiver(SECRET) as hook:
        config = config_for(amqp_url, tmp_path, {"ssss": [{"url": hook.url}]})
        env = envelope(completed())
        service = await running(config)
        store = store_of(config)
        try:
            await publish(amqp_url, env)
            await hook.wait_for(1)
            await eventually(lambda: only_delivery(store).status == "delivered")
            await publish(amqp_url, env)  # the same event id again, to the running notifier
            await asyncio.sleep(0.5)
        finally:
            await service.stop()
        service = await running(config)  # and to a new process
        try:
            await publish(amqp_url, env)
            await asyncio.sleep(0.5)
            assert service.handled == 1, "the event reached the handler, which found it delivered"
        finally:
            await service.stop()

    assert len(hook.calls) == 1
    assert len(store.deliveries()) == 1


async def test_a_pending_delivery_is_made_after_a_restart(amqp_url, tmp_path):
    with WebhookReceiver(SECRET) as hook:
        hook.always(503)
        config = config_for(amqp_url, tmp_path, {"ssss": [
            {"url": hook.url, "backoff_seconds": 0.5, "max_backoff_seconds": 0.5, "max_attempts": 5},
        ]})
        env = envelope(completed())
        service = await running(config)
        store = store_of(config)
        try:
            await publish(amqp_url, env)
            await hook.wait_for(1)
            await eventually(lambda: only_delivery(store).attempts == 1)
        finally:
            await service.stop()  # stops while the delivery waits for its retry
        assert only_delivery(store).status == "pending"

        hook.always(200)
        service = await running(config)
        try:
            assert service.resumed == 1
            calls = await hook.wait_for(2)
            await eventually(lambda: only_delivery(store).status == "delivered")
        finally:
            await service.stop()

    assert [c.answered for c in calls] == [503, 200]
    assert calls[0].body == calls[1].body
    assert {c.headers["x-hotupdate-event-id"] for c in calls} == {env.id}
    assert [a.outcome for a in store.attempts(only_delivery(store).id)] == ["retry", "delivered"]


async def test_a_failing_webhook_does_not_hold_up_other_notifications(amqp_url, tmp_path):
    with WebhookReceiver(SECRET) as down, WebhookReceiver(SECRET) as up:
        down.always(500)
        config = config_for(amqp_url, tmp_path, {
            "ssss": [{"url": down.url, "backoff_seconds": 5, "max_backoff_seconds": 5}],
            "snqxz": [{"url": up.url}],
        })
        # One unacked message at a time: had the handler waited for the webhook, the second would wait too.
        service = build_service(config, prefetch=1)
        await service.start()
        store = store_of(config)
        try:
            started = time.monotonic()
            await publish(amqp_url, envelope(completed(), "ssss"), envelope(completed(), "snqxz"))
            await down.wait_for(1)
            await up.wait_for(1)
            took = time.monotonic() - started
        finally:
            await service.stop()

    assert took < 3, "the second notification waited for the first webhook's backoff"
    assert len(down.calls) == 1
    pending = [r for r in store.deliveries() if r.project == "ssss"]
    assert [r.status for r in pending] == ["pending"]


# cli/main.py lists subcommand modules; this runs cli.consume alone so the test does not depend on that list.
RUNNER = (
    "import argparse, logging, sys\n"
    "from cli import consume\n"
    "p = argparse.ArgumentParser(prog='hotupdate')\n"
    "consume.register(p.add_subparsers(dest='command', required=True))\n"
    "a = p.parse_args(sys.argv[1:])\n"
    "logging.basicConfig(level=logging.INFO, stream=sys.stderr)\n"
    "sys.exit(a.func(a))\n"
)


def _wait_for_line(proc: subprocess.Popen[str], text: str, timeout: float = 30) -> str:
    assert proc.stderr is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        if text in line:
            return "".join(lines)
    raise AssertionError(f"{text!r} not logged; got:\n{''.join(lines)}")


async def test_consume_notifier_process_calls_the_webhook_and_stops_on_sigterm(amqp_url, tmp_path):
    (tmp_path / "hook.key").write_text(SECRET.decode() + "\n")
    with WebhookReceiver(SECRET) as hook:
        (tmp_path / "config.yaml").write_text(yaml.safe_dump({
            "amqp_url": amqp_url,
            "broker": {"shared_user": "guest"},
            "projects": {"ssss": {"areas": {"hot_server": {"大陆": ["cn"]}},
                                  "inventory": {"cn": {"servers": {"game": {"127.0.0.1": ["qq_1"]}}}},
                                  "webhooks": [{"url": hook.url, "secret_file": "hook.key"}]}},
        }, allow_unicode=True), encoding="utf-8")
        proc = subprocess.Popen(
            [sys.executable, "-c", RUNNER, "consume", "notifier", "--config", str(tmp_path / "config.yaml")],
            cwd=tmp_path, stderr=subprocess.PIPE, text=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        )
        try:
            await asyncio.to_thread(_wait_for_line, proc, "consuming hotupdate.notifier")
            env = envelope(completed())
            await publish(amqp_url, env)
            (call,) = await hook.wait_for(1)
            proc.send_signal(signal.SIGTERM)
            await asyncio.to_thread(_wait_for_line, proc, "stopped")
            assert proc.wait(timeout=30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    assert call.verified and call.headers["x-hotupdate-event-id"] == env.id
    assert (tmp_path / "notifier.db").exists() and (tmp_path / "notifier.processed.db").exists()
