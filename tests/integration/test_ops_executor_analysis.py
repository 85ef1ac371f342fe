"""The analysis step (issue 17, Argo Rollouts' analysis): a rollout waits after each batch for a verdict.

Ten "IPs" are directories on this machine (tests/fleet.py); what ran where is counted from real
side effects. ``pass`` lets the next batch start, ``fail`` stops the rollout with the tool's
reason and link in ``final_data``, and no verdict within the timeout stops it too. A verdict
that comes after the deadline does not count.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bus.contract.envelope import Envelope
from bus.contract.events import AnalysisVerdict, BatchFinished, Event, UpdateCompleted
from bus.contract.registry import DEFAULT_REGISTRY, make_envelope
from bus.handling import Incoming
from bus.publisher import AsyncPublisher
from bus.topology import binding
from consumers.ops_executor.executor import Executor
from consumers.ops_executor.handlers import handle_analysis_verdict
from consumers.ops_executor.records import VerdictRecord
from consumers.ops_executor.rollout_run import verdict_in_time
from consumers.ops_executor.service import build_service
from consumers.ops_executor.state import StateStore
from tests.busprobe import Probe
from tests.fleet import Fleet
from tests.ops_world import AREA, PROJECT, World
from tests.recording import RecordingEmitter

IPS = [Fleet.ip(i) for i in range(1, 11)]
VERDICT_EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "send_verdict_with_pika.py"


def _batches(events: list[Event]) -> list[BatchFinished]:
    return [e for e in events if isinstance(e, BatchFinished)]


async def _until_batches(emitter: RecordingEmitter, count: int, timeout: float = 30) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while len(_batches(emitter.events)) < count:
        assert asyncio.get_running_loop().time() < deadline, f"batches: {_batches(emitter.events)}"
        await asyncio.sleep(0.02)


async def _verdict(executor: Executor, updateid: str, batch: int, verdict: str, reason: str = "") -> None:
    """Through the executor's handler, as the consumer delivers it."""
    event = AnalysisVerdict(batch=batch, verdict=verdict, reason=reason, analysed_by="ssss-monitor",  # type: ignore[arg-type]
                            link="https://grafana.example.com/d/ssss")
    env = make_envelope(event, source="monitoring", updateid=updateid, project="ssss", area="cn")
    await handle_analysis_verdict(Incoming(envelope=env, event=event), RecordingEmitter(env), executor=executor)


def _ran(fleet: Fleet) -> list[int]:
    return [fleet.commands_run(ip, Fleet.server(i)) for i, ip in enumerate(IPS, 1)]


async def test_a_pass_verdict_lets_each_next_batch_start(world):
    fleet = Fleet(world)
    env, event = fleet.request(10, rollout={"batch_size": 4, "analysis_timeout_seconds": 30})
    emitter, executor = RecordingEmitter(env), fleet.executor()
    run = asyncio.create_task(executor.handle(env, event, emitter))
    await _until_batches(emitter, 1)
    await asyncio.sleep(0.5)
    assert _ran(fleet) == [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]  # batch 2 waits for the analysis of batch 1
    await _verdict(executor, env.updateid, 1, "pass")
    await _until_batches(emitter, 2)
    await _verdict(executor, env.updateid, 2, "pass")
    await asyncio.wait_for(run, 30)
    assert [b.next for b in _batches(emitter.events)] == ["await_analysis", "await_analysis", "done"]
    done = emitter.events[-1]
    assert isinstance(done, UpdateCompleted) and done.outcome == "succeeded" and _ran(fleet) == [1] * 10


async def test_a_fail_verdict_stops_the_rollout_with_the_tools_reason(world):
    fleet = Fleet(world)
    env, event = fleet.request(10, rollout={"batch_size": 4, "analysis_timeout_seconds": 30})
    emitter, executor = RecordingEmitter(env), fleet.executor()
    run = asyncio.create_task(executor.handle(env, event, emitter))
    await _until_batches(emitter, 1)
    await _verdict(executor, env.updateid, 1, "fail", "error rate 4.2% > 1%")
    await _verdict(executor, env.updateid, 1, "pass")  # the first verdict counts
    await asyncio.wait_for(run, 30)
    done = emitter.events[-1]
    assert isinstance(done, UpdateCompleted)
    assert (done.outcome, done.final_result, done.not_run) == ("stopped", False, IPS[4:])
    assert "第1批分析未通过(ssss-monitor: error rate 4.2% > 1% https://grafana.example.com/d/ssss)" in done.final_data
    assert _ran(fleet) == [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]


async def test_no_verdict_within_the_timeout_stops_and_a_late_one_does_not_count(world):
    fleet = Fleet(world)
    env, event = fleet.request(10, rollout={"batch_size": 5, "analysis_timeout_seconds": 0.5})
    emitter, store = RecordingEmitter(env), StateStore(world.state_url)
    await asyncio.wait_for(fleet.executor(store=store).handle(env, event, emitter), 30)
    done = emitter.events[-1]
    assert isinstance(done, UpdateCompleted)
    assert (done.outcome, done.not_run) == ("stopped", IPS[5:])
    assert "第1批分析超时(0.5s无结论), 已停止" in done.final_data
    assert _ran(fleet) == [1] * 5 + [0] * 5
    # a pass recorded now, after the deadline, would not change the decision of a resumed run
    await store.record_verdict(env.updateid, VerdictRecord(1, "pass", "", "", "late", datetime.now(UTC)))
    (first,) = [b for n, b in (await store.batches(env.updateid)).items() if n == 1]
    assert await verdict_in_time(store, env.updateid, first, event.rollout) is None


@pytest.mark.rabbit
async def test_a_verdict_on_the_bus_reaches_the_executor_service_and_stops_the_rollout(tmp_path, amqp_url):
    fleet = Fleet(World(tmp_path))
    env, _ = fleet.request(10, rollout={"batch_size": 5, "analysis_timeout_seconds": 60})
    service = build_service(fleet.config(amqp_url), "om1")
    await service.start()
    try:
        async with Probe(amqp_url) as results, AsyncPublisher(amqp_url) as pub:
            await results.bind(*(binding(kind, project=PROJECT) for kind in (BatchFinished, UpdateCompleted)))
            await pub.publish(env)
            await results.wait_for(1, timeout=30)  # batch 1 finished: await_analysis
            # the documented example (docs/examples/send_verdict_with_pika.py), as its own process
            sent = await asyncio.to_thread(subprocess.run, [sys.executable, str(VERDICT_EXAMPLE)],
                                           capture_output=True, text=True, timeout=60, env={
                                               **os.environ, "AMQP_URL": amqp_url, "PROJECT": PROJECT,
                                               "AREA": AREA, "UPDATE_ID": env.updateid, "BATCH": "1",
                                               "VERDICT": "fail", "REASON": "p99 latency doubled"})
            assert sent.returncode == 0, sent.stderr
            first, last = await results.wait_for(2, timeout=30)
    finally:
        await service.stop()
    batch = DEFAULT_REGISTRY.decode(Envelope.from_bytes(first.body))
    done = DEFAULT_REGISTRY.decode(Envelope.from_bytes(last.body))
    assert isinstance(batch, BatchFinished) and batch.next == "await_analysis"
    assert isinstance(done, UpdateCompleted) and (done.outcome, done.not_run) == ("stopped", IPS[5:])
    assert "第1批分析未通过(ssss-monitor: p99 latency doubled)" in done.final_data
    assert _ran(fleet) == [1] * 5 + [0] * 5
