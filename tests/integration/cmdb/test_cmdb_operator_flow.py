"""Issue 9 through the running CMDB process on the real broker: confirm and abort as events, a retry
pulled and pushed again by itself, and a silent executor reported stalled to a signed webhook.

The version receiver and the ops executor are played by the test (their own tests cover them).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from bus.contract.envelope import Envelope
from bus.contract.events import BatchFinished, BatchFinishedV1, UpdateRequested
from bus.publisher import AsyncPublisher
from cli.cmdb_cmd import register
from consumers.notifier.service import build_service
from domain.config import HotupdateConfig, parse_config
from tests.busprobe import Probe
from tests.cmdb_support import (
    TOKENS,
    auth,
    batch_finished,
    config_dict,
    files_pulled,
    files_pushed,
    ip_finished,
    ip_finished_servers,
    update_completed,
    update_started,
)
from tests.integration.cmdb.test_cmdb_app import _envelopes, _wait_for, _wait_state, cmdb
from tests.webhook_receiver import WebhookReceiver

pytestmark = [pytest.mark.rabbit, pytest.mark.slow]

START = {"project": "ssss", "area": "大陆", "update_type": "hot_server", "version": "004200000"}
SECRET = b"webhook-secret-of-ssss"


def _config(tmp_path: Path, amqp_url: str, *, stall_after: float = 300, webhook: str | None = None) -> HotupdateConfig:
    raw: dict[str, Any] = config_dict()
    raw["amqp_url"] = amqp_url
    raw["cmdb"] = {**raw["cmdb"], "stall_after_seconds": stall_after}
    raw["notifier"] = {"state_url": f"sqlite:///{tmp_path / 'notifier.db'}"}
    if webhook is not None:
        raw["projects"]["ssss"]["webhooks"] = [{
            "url": webhook, "secret": SECRET.decode(), "events": ["stalled"],
            "backoff_seconds": 0.05, "max_backoff_seconds": 0.2, "timeout_seconds": 2, "max_attempts": 3,
        }]
    return parse_config(raw, tmp_path / "config.yaml")


class Flow:
    """Drives one update through the CMDB over HTTP and the broker, playing receiver and executor."""

    def __init__(self, client: Any, probe: Probe, others: AsyncPublisher) -> None:
        self.client, self.probe, self.others = client, probe, others

    async def next_from_cmdb(self, event_type: str, updateid: str | None = None) -> Envelope:
        for _ in range(150):
            for env in _envelopes(self.probe.messages):
                if env.type == event_type and env.source == "hotupdate/cmdb" and updateid in (None, env.updateid):
                    return env
            await asyncio.sleep(0.1)
        raise AssertionError(f"the CMDB published no {event_type}")

    async def requested(self, push: dict[str, Any] | None = None) -> tuple[str, Envelope]:
        response = await self.client.post("/api/updates", json=START, headers=auth())
        assert response.status_code == 201, response.text
        update_id: str = response.json()["id"]
        await self.others.publish(files_pulled(await self.next_from_cmdb("hotupdate.pull.requested.v1", update_id)))
        await _wait_state(self.client, update_id, "pulled")
        response = await self.client.post(f"/api/updates/{update_id}/push", json=push or {}, headers=auth("bob"))
        assert response.status_code == 200, response.text
        await self.others.publish(files_pushed(await self.next_from_cmdb("hotupdate.push.requested.v1", update_id)))
        return update_id, await self.next_from_cmdb(UpdateRequested.type_name(), update_id)


@pytest.mark.parametrize("batch_model", [BatchFinished, BatchFinishedV1], ids=["batch-v2", "batch-v1-old-executor"])
async def test_confirm_and_abort_reach_the_bus_and_the_completion_ends_the_update_aborted(
    amqp_url, sqlite_url, tmp_path, batch_model
):
    config = _config(tmp_path, amqp_url)
    async with Probe(amqp_url) as probe, AsyncPublisher(amqp_url) as others:
        await probe.bind("ssss.#")
        async with cmdb(config, sqlite_url, amqp_url) as client:
            flow = Flow(client, probe, others)
            rollout = {"batch_size": 1, "on_failure": "confirm"}
            update_id, request = await flow.requested({"rollout": rollout})
            assert request.type == "hotupdate.update.requested.v3"  # producers send the newest version
            assert request.data["rollout"]["on_failure"] == "confirm"

            early = await client.post(f"/api/updates/{update_id}/confirm", headers=auth())
            assert early.status_code == 409 and "cannot confirm" in early.json()["detail"]

            await others.publish(update_started(request))
            await others.publish(ip_finished(request, "127.0.0.11", ok=False, offset=2))
            batch = batch_finished(request, 1, 4, "await_confirm", ["127.0.0.11"], failed=1, model=batch_model)
            assert batch.type == batch_model.type_name()
            await others.publish(batch)
            await _wait_state(client, update_id, "awaiting_confirm")
            response = await client.post(f"/api/updates/{update_id}/confirm", headers=auth("bob"))
            assert response.status_code == 200, response.text
            go = await flow.next_from_cmdb("hotupdate.batch.confirmed.v1", update_id)
            assert go.data == {"batch": 2, "confirmed_by": "bob"}

            response = await client.post(f"/api/updates/{update_id}/abort", json={"reason": "stop it"},
                                         headers=auth())
            assert response.status_code == 200 and response.json()["state"] == "aborting"
            abort = await flow.next_from_cmdb("hotupdate.update.abort_requested.v1", update_id)
            assert abort.data == {"requested_by": "alice", "reason": "stop it"}

            await others.publish(ip_finished(request, "127.0.0.12", offset=3))
            await others.publish(update_completed(request, ok=False, outcome="aborted",
                                                  not_run=["127.0.0.21", "127.0.0.31"]))
            status = await _wait_state(client, update_id, "aborted")
    assert status["outcome"] == "aborted" and status["not_run"] == ["127.0.0.21", "127.0.0.31"]
    assert status["missing_targets"] == []


async def test_retry_failed_is_pulled_pushed_and_requested_for_exactly_the_failed_servers(
    amqp_url, sqlite_url, tmp_path, capsys
):
    config = _config(tmp_path, amqp_url)
    parser = argparse.ArgumentParser(prog="hotupdate")
    register(parser.add_subparsers(dest="command", required=True))
    async with Probe(amqp_url) as probe, AsyncPublisher(amqp_url) as others:
        await probe.bind("ssss.#")
        async with cmdb(config, sqlite_url, amqp_url) as client:
            flow = Flow(client, probe, others)
            update_id, request = await flow.requested()
            await others.publish(ip_finished(request, "127.0.0.11", offset=2))
            await others.publish(ip_finished_servers(request, "127.0.0.12", {"qq_3": True, "qq_4": False}, 3))
            await others.publish(ip_finished(request, "127.0.0.21", offset=4))
            await others.publish(ip_finished(request, "127.0.0.31", ok=False, offset=5))
            await others.publish(update_completed(request, ok=False))
            await _wait_state(client, update_id, "failed")

            def cli(*argv: str) -> tuple[int, str, str]:
                args = parser.parse_args(["update", *argv, "--url", str(client.base_url), "--token", TOKENS["bob"]])
                code = args.func(args)
                out, err = capsys.readouterr()
                return code, out, err

            code, out, err = await asyncio.to_thread(cli, "retry-failed", update_id, "--batch-size", "1")
            assert code == 0, err
            retry_id = json.loads(out)["id"]
            assert json.loads(out)["relation"] == "retry_failed"
            code, _, err = await asyncio.to_thread(cli, "rollback", update_id)
            assert code == 1 and "error 409" in err and "no earlier hot_server update" in err

            pull = await flow.next_from_cmdb("hotupdate.pull.requested.v1", retry_id)
            await others.publish(files_pulled(pull))
            push = await flow.next_from_cmdb("hotupdate.push.requested.v1", retry_id)  # pushed by the CMDB itself
            await others.publish(files_pushed(push))
            again = await flow.next_from_cmdb(UpdateRequested.type_name(), retry_id)
            await _wait_for(client, retry_id, lambda s: s["state"] == "update_requested")
    retry = UpdateRequested.model_validate(again.data)
    assert retry.update_server_list == {"game": {"127.0.0.12": ["qq_4"]}, "cross_center": {"127.0.0.31": ["center_1"]}}
    assert (retry.parent_id, retry.relation, retry.version) == (update_id, "retry_failed", "004200000")
    assert retry.rollout is not None and retry.rollout.batch_size == 1
    assert [f.file_name for f in retry.update_file_list] == [f["file_name"] for f in request.data["update_file_list"]]


async def test_a_silent_executor_makes_one_stall_and_a_signed_stalled_webhook(amqp_url, sqlite_url, tmp_path):
    with WebhookReceiver(SECRET) as hook:
        config = _config(tmp_path, amqp_url, stall_after=0.8, webhook=hook.url)
        notifier = build_service(config)
        await notifier.start()
        try:
            async with Probe(amqp_url) as probe, AsyncPublisher(amqp_url) as others:
                await probe.bind("ssss.#")
                async with cmdb(config, sqlite_url, amqp_url) as client:
                    flow = Flow(client, probe, others)
                    update_id, request = await flow.requested()
                    await others.publish(update_started(request))
                    await others.publish(ip_finished(request, "127.0.0.11", offset=2))
                    # ... and then the executor falls silent
                    stalled = await flow.next_from_cmdb("hotupdate.update.stalled.v1", update_id)
                    (call,) = await hook.wait_for(1, timeout=15)
                    status = await _wait_for(client, update_id, lambda s: s["stalled_for"] is not None)
                    await asyncio.sleep(2.0)  # the silence goes on: no second stall for it
                    stalls = [e for e in _envelopes(probe.messages) if e.type == stalled.type]
        finally:
            await notifier.stop()
    assert stalled.data["silent_targets"] == ["127.0.0.12", "127.0.0.21", "127.0.0.31"]
    assert stalled.data["stalled_after_seconds"] == 0.8
    assert len(stalls) == 1
    assert status["state"] == "running" and status["missing_targets"] == ["127.0.0.12", "127.0.0.21", "127.0.0.31"]
    assert call.verified and call.answered == 200
    body = json.loads(call.body)
    assert (body["kind"], body["update_id"], body["project"]) == ("stalled", update_id, "ssss")
    assert "3 silent: 127.0.0.12, 127.0.0.21, 127.0.0.31" in body["summary"]
    assert len(hook.calls) == 1
