"""The whole CMDB process (HTTP API, outbox relay, process manager) against the real broker.

The version receiver and the ops manager are played by the test: it answers the CMDB's
events with the events those components would publish.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
from collections.abc import Callable, Iterable
from typing import Any

import httpx
import pytest
from aio_pika.abc import AbstractIncomingMessage

from bus.contract.envelope import Envelope, derived_event_id
from bus.contract.events import UpdateRequested
from bus.id_keys import id_key_from_url
from bus.publisher import AsyncPublisher
from cli.cmdb_cmd import register
from producers.cmdb.app import run
from producers.cmdb.bootstrap import bootstrap
from tests.busprobe import Probe
from tests.cmdb_support import (
    TOKENS,
    TcpProxy,
    auth,
    files_pulled,
    files_pushed,
    free_port,
    ip_finished,
    make_config,
    update_completed,
    update_started,
    via_port,
)

pytestmark = [pytest.mark.rabbit, pytest.mark.slow]

START = {"project": "ssss", "area": "大陆", "update_type": "hot_server", "version": "004200000"}


@contextlib.asynccontextmanager
async def cmdb(config, database_url, amqp_url, *, broker_up=True):
    """Run the CMDB process in this event loop; yields an HTTP client pointed at it."""
    port = free_port()
    runtime = bootstrap(config, database_url, amqp_url=amqp_url, publish_retry_seconds=0.5)
    stop = asyncio.Event()
    task = asyncio.create_task(run(runtime, host="127.0.0.1", port=port, stop=stop))
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        for _ in range(100):
            with contextlib.suppress(httpx.TransportError):
                if (await client.get("/healthz")).status_code == 200:
                    break
            await asyncio.sleep(0.05)
        client.runtime = runtime  # type: ignore[attr-defined]
        if broker_up:  # its queue exists from now on, so answers to its events reach it
            await asyncio.wait_for(runtime.consumer_started.wait(), 15)
        try:
            yield client
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)


async def _wait_for(
    client: httpx.AsyncClient, update_id: str, condition: Callable[[dict[str, Any]], bool], timeout: float = 15.0
) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        body: dict[str, Any] = (await client.get(f"/api/updates/{update_id}", headers=auth())).json()
        if condition(body):
            return body
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"update {update_id} never got there: {body}")
        await asyncio.sleep(0.1)


async def _wait_state(
    client: httpx.AsyncClient, update_id: str, state: str, timeout: float = 15.0
) -> dict[str, Any]:
    return await _wait_for(client, update_id, lambda body: body["state"] == state, timeout)


def _envelopes(messages: Iterable[AbstractIncomingMessage]) -> list[Envelope]:
    return [Envelope.from_bytes(m.body) for m in messages]


async def test_an_update_travels_from_http_through_every_step_to_completed(amqp_url, sqlite_url, tmp_path):
    config = make_config(tmp_path)
    async with Probe(amqp_url) as probe, AsyncPublisher(amqp_url) as others:
        await probe.bind("ssss.#")
        async with cmdb(config, sqlite_url, amqp_url) as client:
            response = await client.post("/api/updates", json=START, headers=auth("alice"))
            assert response.status_code == 201
            update_id = response.json()["id"]

            [pull] = _envelopes(await probe.wait_for(1))
            assert (pull.type, pull.updateid, pull.data["requested_by"]) == (
                "hotupdate.pull.requested.v1", update_id, "alice"
            )
            await others.publish(files_pulled(pull))  # as file_pull would
            await _wait_state(client, update_id, "pulled")

            response = await client.post(f"/api/updates/{update_id}/push", json={}, headers=auth("bob"))
            assert response.status_code == 200, response.text
            push = _envelopes(await probe.wait_for(3))[2]
            assert push.type == "hotupdate.push.requested.v1"

            pushed = files_pushed(push)
            await others.publish(pushed)  # as file_push would
            request = _envelopes(await probe.wait_for(5))[4]
            assert request.type == UpdateRequested.type_name()
            # keyed by the CMDB's broker login: stable for it, not the public uuid5 anyone could compute
            assert request.id == derived_event_id(pushed.id, request.type, secret=id_key_from_url(amqp_url))
            assert request.id != derived_event_id(pushed.id, request.type)
            assert request.data["requested_by"] == "bob"
            await _wait_state(client, update_id, "update_requested")

            await others.publish(update_started(request))  # as the ops executor would
            for offset, ip in enumerate(("127.0.0.11", "127.0.0.12", "127.0.0.21", "127.0.0.31"), start=2):
                await others.publish(ip_finished(request, ip, offset=offset))
            await others.publish(update_completed(request))
            await _wait_state(client, update_id, "completed")
            # events are handled concurrently: a result may land just after the completion
            status = await _wait_for(client, update_id, lambda s: len(s["results"]) == 4)
            await asyncio.sleep(0.5)  # nothing further is published by the CMDB
    assert status["final_data"] == "全部完成"
    assert all(r["ok"] for r in status["results"])
    from_cmdb = [e.type for e in _envelopes(probe.messages) if e.source == "hotupdate/cmdb"]
    assert from_cmdb == ["hotupdate.pull.requested.v1", "hotupdate.push.requested.v1",
                         UpdateRequested.type_name()]


async def test_a_request_accepted_while_the_broker_is_down_is_delivered_when_it_returns(
    amqp_url, sqlite_url, tmp_path
):
    config = make_config(tmp_path)
    port = free_port()
    proxy = TcpProxy(amqp_url, port)  # down until started
    async with Probe(amqp_url) as probe:
        await probe.bind("#")
        try:
            async with cmdb(config, sqlite_url, via_port(amqp_url, port), broker_up=False) as client:
                response = await client.post("/api/updates", json=START, headers=auth())
                assert response.status_code == 201
                update_id = response.json()["id"]
                await asyncio.sleep(1.5)
                assert probe.messages == []
                await proxy.start()
                [got] = await probe.wait_for(1, timeout=20)
                # the process manager comes up too, and then reacts to the receiver's answer
                await asyncio.wait_for(client.runtime.consumer_started.wait(), 30)
                async with AsyncPublisher(amqp_url) as others:
                    await others.publish(files_pulled(Envelope.from_bytes(got.body)))
                await _wait_state(client, update_id, "pulled", timeout=30)
        finally:
            await proxy.stop()
    assert len([m for m in probe.messages if (m.routing_key or "").endswith("pull.requested.v1")]) == 1


async def test_operators_script_start_push_and_status_with_the_cli(amqp_url, sqlite_url, tmp_path, capsys):
    config = make_config(tmp_path)
    parser = argparse.ArgumentParser(prog="hotupdate")
    register(parser.add_subparsers(dest="command", required=True))

    def cli(*argv: str) -> tuple[int, str, str]:
        args = parser.parse_args(["update", *argv, "--url", base_url, "--token", TOKENS["alice"]])
        code = args.func(args)
        out, err = capsys.readouterr()
        return code, out, err

    async with Probe(amqp_url) as probe, AsyncPublisher(amqp_url) as others:
        await probe.bind("#")
        async with cmdb(config, sqlite_url, amqp_url) as client:
            base_url = str(client.base_url)
            code, out, _ = await asyncio.to_thread(
                cli, "start", "--project", "ssss", "--area", "大陆", "--type", "hot_server", "--version", "42"
            )
            assert code == 0
            update_id = json.loads(out)["id"]

            code, _, err = await asyncio.to_thread(cli, "push", update_id)
            assert code == 1
            assert "error 409" in err and "pull has not finished" in err

            [pull] = _envelopes(await probe.wait_for(1))
            await others.publish(files_pulled(pull))
            code, out, _ = await asyncio.to_thread(cli, "status", update_id, "--wait", "--wait-timeout", "15")
            assert code == 0 and json.loads(out)["state"] == "pulled"

            code, out, _ = await asyncio.to_thread(
                cli, "push", update_id, "--file", "ebin/role_server.beam", "--server", "qq_1"
            )
            assert code == 0
            assert json.loads(out)["state"] == "push_requested"

            code, _, err = await asyncio.to_thread(cli, "start", "--project", "nope", "--area", "x",
                                                   "--type", "hot_server", "--version", "1")
            assert code == 1 and "error 422" in err and "unknown project 'nope'" in err

    args = parser.parse_args(["update", "status", update_id, "--url", base_url])
    assert args.token is None  # without --token nor HOTUPDATE_TOKEN the CLI sends none


def test_hash_token_prints_the_sha256_to_configure(monkeypatch, capsys):
    import io
    import sys

    from producers.cmdb.auth import hash_token

    parser = argparse.ArgumentParser(prog="hotupdate")
    register(parser.add_subparsers(dest="command", required=True))
    monkeypatch.setattr(sys, "stdin", io.StringIO("s3cret\n"))
    args = parser.parse_args(["cmdb", "hash-token"])
    assert args.func(args) == 0
    assert capsys.readouterr().out.strip() == hash_token("s3cret")
