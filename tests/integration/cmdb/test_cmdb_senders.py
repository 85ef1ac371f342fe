"""Who may report on an update, played as an attacker would on a real broker (issue 15).

The CMDB runs with per-component broker users (no shared user); the update's receiver and ops
manager log in as their own users, and another team's user tries to forge results. The forged
events are parked with their reason, the real ones finish the update, and the projection's log
(running next to it) still verifies and shows who really published each event.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Any

import httpx
import pytest
from aio_pika.abc import AbstractIncomingMessage
from sqlalchemy import select
from sqlalchemy.orm import Session

from bus.contract.envelope import Envelope, derived_event_id
from bus.contract.events import UpdateCompleted, UpdateRequested
from bus.id_keys import id_key_from_url
from bus.identity import component_user
from bus.redelivery import REASON_HEADER
from bus.topology import ServiceQueue, Topology, declare_all
from cli.main import main as hotupdate
from domain.config import parse_config
from domain.db import make_engine
from producers.cmdb.app import run as run_cmdb
from producers.cmdb.bootstrap import SERVICE as CMDB
from producers.cmdb.bootstrap import bootstrap
from projections import log as event_log
from projections.models import LoggedEvent
from projections.service import SERVICE as PROJECTION
from projections.service import build_service
from projections.service import run as run_projection
from tests.broker_users import broker_users, publish_as
from tests.busprobe import Probe
from tests.cmdb_support import (
    auth,
    config_dict,
    files_pulled,
    files_pushed,
    free_port,
    ip_finished,
    update_completed,
)

pytestmark = [pytest.mark.rabbit, pytest.mark.slow]

START = {"project": "ssss", "area": "大陆", "update_type": "hot_server", "version": "004200000"}
IPS = ("127.0.0.11", "127.0.0.12", "127.0.0.21", "127.0.0.31")


def _config(tmp_path, amqp_url: str, manager: str, receiver: str, other: str):
    raw: dict[str, Any] = config_dict()
    raw.pop("broker")  # per-component users: the broker tells the components apart
    raw["amqp_url"] = amqp_url
    ssss = raw["projects"]["ssss"]
    ssss["rsync_targets"] = [{**t, "ops_manager": manager} for t in ssss["rsync_targets"]]
    # ``other`` serves ssss too, so the broker and the identity table let its user report on ssss
    # updates: only the CMDB knows that this update went to ``manager``.
    raw["ops_managers"] = {manager: {**raw["ops_managers"]["ops1"]}, "ops2": raw["ops_managers"]["ops2"],
                           other: {**raw["ops_managers"]["ops1"], "projects": ["ssss"]}}
    raw["receivers"] = {receiver: {"projects": ["ssss"], "version_root": str(tmp_path / "v"),
                                   "backup_root": str(tmp_path / "b")}}
    return parse_config(raw, tmp_path / "config.yaml")


@contextlib.asynccontextmanager
async def _cmdb(config, database_url: str, amqp_url: str):
    port = free_port()
    runtime = bootstrap(config, database_url, amqp_url=amqp_url, publish_retry_seconds=0.5)
    stop = asyncio.Event()
    task = asyncio.create_task(run_cmdb(runtime, host="127.0.0.1", port=port, stop=stop))
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        for _ in range(100):
            with contextlib.suppress(httpx.TransportError):
                if (await client.get("/healthz")).status_code == 200:
                    break
            await asyncio.sleep(0.05)
        await asyncio.wait_for(runtime.consumer_started.wait(), 15)
        try:
            yield client
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)


async def _state(client: httpx.AsyncClient, update_id: str, *states: str, timeout: float = 20.0) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        body: dict[str, Any] = (await client.get(f"/api/updates/{update_id}", headers=auth())).json()
        if body["state"] in states:
            return body
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"update {update_id} never got to {states}: {body}")
        await asyncio.sleep(0.1)


async def _of_type(probe: Probe, event_type: str, timeout: float = 20.0) -> Envelope:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        found = [e for e in (Envelope.from_bytes(m.body) for m in probe.messages) if e.type == event_type]
        if found:
            return found[0]
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"no {event_type}; seen: {[Envelope.from_bytes(m.body).type for m in probe.messages]}")
        await asyncio.sleep(0.05)


def _reasons(messages: list[AbstractIncomingMessage]) -> dict[str, str]:
    return {m.message_id or "": str((m.headers or {}).get(REASON_HEADER, "")) for m in messages}


async def test_forged_results_are_parked_and_the_real_result_of_the_ops_manager_stands(
        amqp_url, broker, sqlite_url, tmp_path, capsys):
    suffix = uuid.uuid4().hex[:8]
    manager, receiver = f"ops{suffix}", f"recv{suffix}"
    ops_user = component_user("ops_executor", manager)
    pull_user, push_user = component_user("file_pull", receiver), component_user("file_push", receiver)
    mallory = f"team.mallory{suffix}"
    other = f"other{suffix}"
    other_user = component_user("ops_executor", other)
    config = _config(tmp_path, amqp_url, manager, receiver, other)
    projection_url = f"sqlite:///{tmp_path / 'projection.db'}"
    delays = (100,)
    await declare_all(amqp_url, Topology(), [ServiceQueue(service=PROJECTION, bindings=("#",), retry_delays_ms=delays)])
    consumer, projection = build_service(amqp_url=amqp_url, database_url=projection_url, retry_delays_ms=delays)
    stop_projection = asyncio.Event()
    projection_task = asyncio.create_task(run_projection(consumer, projection, stop_projection))
    try:
        with broker_users(broker, amqp_url, ops_user, pull_user, push_user, mallory, other_user) as urls:
            async with Probe(amqp_url) as probe, Probe(amqp_url) as parked, _cmdb(config, sqlite_url, amqp_url) as api:
                await probe.bind("ssss.#")
                await parked.watch(Topology().parking_queue(CMDB))
                created = await api.post("/api/updates", json=START, headers=auth("alice"))
                assert created.status_code in (200, 201), created.text
                update_id = created.json()["id"]
                pull = await _of_type(probe, "hotupdate.pull.requested.v1")
                await publish_as(urls[pull_user], pull_user, files_pulled(pull))
                await _state(api, update_id, "pulled")
                pushed = await api.post(f"/api/updates/{update_id}/push", json={}, headers=auth("bob"))
                assert pushed.status_code == 200, pushed.text
                push = await _of_type(probe, "hotupdate.push.requested.v1")
                await publish_as(urls[push_user], push_user, files_pushed(push))
                request = await _of_type(probe, UpdateRequested.type_name())
                await _state(api, update_id, "update_requested")

                # 1. Another team's user claims the update succeeded, in the right chain.
                forged = update_completed(request, ok=True).model_copy(update={"id": str(uuid.uuid4())})
                await publish_as(urls[mallory], mallory, forged)
                # 2. A decoy under the id anyone could compute from the request's id shown on the dashboard.
                predicted = derived_event_id(request.id, UpdateCompleted.type_name())
                decoy = update_completed(request, ok=True).model_copy(update={"id": predicted})
                await publish_as(urls[mallory], mallory, decoy)
                # 3. The ops manager's own user, but not an answer to the CMDB's request.
                unchained = update_completed(request, ok=True).model_copy(
                    update={"id": str(uuid.uuid4()), "causationid": str(uuid.uuid4())})
                await publish_as(urls[ops_user], ops_user, unchained)
                # 4. A receiver's user may answer pulls and pushes, not report the execution.
                wrong_component = update_completed(request, ok=True).model_copy(update={"id": str(uuid.uuid4())})
                await publish_as(urls[pull_user], pull_user, wrong_component)
                # 5. Another ops manager serving the project: allowed to report on ssss, not on this update.
                elsewhere = update_completed(request, ok=True).model_copy(update={"id": str(uuid.uuid4())})
                await publish_as(urls[other_user], other_user, elsewhere)

                reasons = _reasons(await parked.wait_for(5, timeout=30))
                # 1, 2 and 4 never reach the handler: their users may not publish update.completed at all
                assert reasons[forged.id].startswith("identity:") and mallory in reasons[forged.id]
                assert reasons[predicted].startswith("identity:") and mallory in reasons[predicted]
                assert reasons[wrong_component.id].startswith("identity:") and pull_user in reasons[wrong_component.id]
                assert "chain:" in reasons[unchained.id]
                assert reasons[elsewhere.id].startswith("rejected by handler: sender:")
                assert other_user in reasons[elsewhere.id]
                assert (await _state(api, update_id, "update_requested"))["state"] == "update_requested"

                # The real executor: its ids keyed by its own login, one of its servers failed.
                key = id_key_from_url(urls[ops_user])
                real = [ip_finished(request, ip, ok=ip != IPS[0], offset=2 + n) for n, ip in enumerate(IPS)]
                real.append(update_completed(request, ok=False))
                real = [e.model_copy(update={"id": derived_event_id(request.id, e.type, (e.data.get("ip") or ""),
                                                                      secret=key)}) for e in real]
                assert real[-1].id != predicted  # nobody without the key could have squatted it
                for event in real:
                    await publish_as(urls[ops_user], ops_user, event)
                done = await _state(api, update_id, "failed", "completed")
                assert done["state"] == "failed"  # the real result stands, not the forged success
    finally:
        await asyncio.sleep(1.0)  # let the projection take the last events in
        stop_projection.set()
        await asyncio.wait_for(projection_task, 30)

    # The projection logged everything, each with the publisher the broker verified.
    engine = make_engine(projection_url)
    try:
        with Session(engine) as session:
            rows = session.execute(select(LoggedEvent.event_id, LoggedEvent.publisher))
            publishers = {r.event_id: r.publisher for r in rows}
            assert event_log.verify(session).ok
    finally:
        engine.dispose()
    assert publishers[real[-1].id] == ops_user
    assert publishers[forged.id] == publishers[predicted] == mallory
    assert hotupdate(["log", "verify", "--database-url", projection_url]) == 0
    out = capsys.readouterr().out
    # the ops manager's user: its real events and the unchained one; mallory's two forgeries
    assert "events verify" in out and f"{ops_user} ×{len(real) + 1}" in out and f"{mallory} ×2" in out

