"""``hotupdate status`` reads each configured service's queue from the broker: missing, idle, or consumed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bus.consumer import ConsumerService
from bus.contract.events import PullRequested
from bus.contract.examples import EXAMPLES
from bus.contract.registry import make_envelope
from bus.publisher import AsyncPublisher
from bus.topology import ServiceQueue, Topology, binding, declare_all
from cli.main import main

pytestmark = [pytest.mark.rabbit]
EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "example.yaml"


def _status(capsys) -> tuple[int, dict[str, dict]]:
    code = main(["status", "--config", str(EXAMPLE), "--json"])
    rows = json.loads(capsys.readouterr().out)["services"]
    return code, {r["service"]: r for r in rows}


async def test_status_lists_every_configured_service_with_its_queue_state(amqp_url, monkeypatch, capsys) -> None:
    monkeypatch.setenv("HOTUPDATE_AMQP_URL", amqp_url)
    code, rows = _status(capsys)
    assert code == 3
    assert {"cmdb", "projection", "file_pull.file_push8", "file_push.file_push8", "ops_executor.ops1"} <= set(rows)
    assert {r["state"] for r in rows.values()} == {"no queue"}

    pull = ServiceQueue(service="file_pull.file_push8", bindings=(binding(PullRequested, project="ssss"),))
    await declare_all(amqp_url, Topology(), [pull])
    async with AsyncPublisher(amqp_url) as publisher:
        for n in range(2):
            await publisher.publish(make_envelope(EXAMPLES[0], source="hotupdate/cmdb", updateid=f"u-{n}",
                                                  project="ssss", area="cn"))
    consumer = ConsumerService(amqp_url=amqp_url, queue=ServiceQueue(service="projection", bindings=("#",)),
                               handlers={}, source="hotupdate/projection")
    await consumer.start()
    try:
        code, rows = _status(capsys)
    finally:
        await consumer.stop()
    assert code == 3  # the others are still not running
    assert rows["file_pull.file_push8"] | {"messages": rows["file_pull.file_push8"]["messages"]} == {
        "component": "file_pull", "service": "file_pull.file_push8", "queue": "hotupdate.file_pull.file_push8",
        "state": "no consumer", "consumers": 0, "messages": 2, "parked": 0}
    assert rows["projection"]["state"] == "consuming" and rows["projection"]["consumers"] == 1
    assert rows["ops_executor.ops1"]["state"] == "no queue"
