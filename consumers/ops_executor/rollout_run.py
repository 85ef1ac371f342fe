"""Running an update's rollout: batch after batch, each gated (pause, go-ahead, stop, abort) and recorded.

The decisions are the pure rules of :mod:`consumers.ops_executor.rollout`; this module applies
them to the state store and the targets. A batch recorded before (a resumed or carried-on
update) is not run again: its targets' recorded results are reported instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime, timedelta
from typing import Literal

from bus.contract.events import RolloutPlanV2, UpdateRequested
from consumers.ops_executor.answer import completed_event
from consumers.ops_executor.records import BatchRecord, VerdictRecord
from consumers.ops_executor.rollout import analysis_gate, analysis_stop_text, completion_text, next_step, outcome_of
from consumers.ops_executor.state import StateStore
from consumers.ops_executor.targets import Ran, Serialized, Targets

log = logging.getLogger(__name__)

Gate = Literal["go", "wait", "stopped", "aborted"]


async def roll_out(store: StateStore, uid: str, event: UpdateRequested, targets: Targets, out: Serialized,
                   halt: asyncio.Event, quiet_before: int) -> None:
    """Run the batches not yet recorded, report the recorded ones again (muted before ``quiet_before``), complete."""
    plan, total = event.rollout, targets.batch_count()
    recorded = await store.batches(uid)
    ran, not_run = Ran(), list[str]()
    stopped_after: int | None = None
    stop_why: str | None = None
    aborted = False
    for number in range(1, total + 1):
        out.muted = number < quiet_before
        batch = recorded.get(number)
        if batch is None:
            gate = await batch_gate(store, uid, number, recorded.get(number - 1), plan, halt)
            if gate == "wait":
                if await park(store, uid, number, out, halt):
                    return
                gate = await batch_gate(store, uid, number, recorded.get(number - 1), plan, halt)
            if gate != "go":
                not_run += [key for rest in range(number, total + 1) for key in targets.keys(rest)]
                if gate == "stopped":
                    stopped_after = number - 1
                    stop_why = await _analysis_stop_why(store, uid, recorded.get(number - 1), plan)
                aborted = aborted or gate == "aborted"
                log.info("update %s: batches %d-%d not run (%s)", uid, number, total, gate)
                break
        result = await targets.run(number, may_start=batch is None, halt=halt, out=out)
        ran.add(result)
        not_run += result.not_started
        aborted = aborted or bool(result.not_started or result.aborted)
        if batch is None:
            decided = next_step(number, total, failed=bool(result.failed), halted=halt.is_set(), plan=plan)
            batch = await store.record_batch(
                uid, BatchRecord(number, result.total - len(result.failed), len(result.failed), decided,
                                 datetime.now(UTC)))
            recorded[number] = batch
            log.info("update %s: batch %d/%d finished, %d ok, %d failed, next: %s", uid, number, total,
                     batch.ok_count, batch.failed_count, batch.next)
        if plan is not None:
            await out.emit(targets.finished(batch), key=str(number))
    out.muted = False
    outcome = outcome_of(aborted=aborted, stopped=stopped_after is not None, failed=len(ran.failed))
    abort = await store.abort_of(uid) if outcome == "aborted" else None
    record = await store.finish(
        uid, status="finished", final_result=outcome == "succeeded",
        final_data=completion_text(outcome, failed=ran.failed, total=ran.total, not_run=not_run,
                                   stopped_after=stopped_after, abort=abort, stop_why=stop_why),
        ok_count=ran.total - len(ran.failed), failed_count=len(ran.failed), outcome=outcome, not_run=not_run)
    log.info("update %s: %s finished (%s), %d ok, %d failed, %d not run", uid, event.update_type, outcome,
             record.ok_count, record.failed_count, len(not_run))
    await out.emit(completed_event(record, event, ran.data))


async def batch_gate(store: StateStore, uid: str, number: int, previous: BatchRecord | None, plan: RolloutPlanV2 | None,
               halt: asyncio.Event) -> Gate:
    """Whether batch ``number`` may start: go, wait for a go-ahead, or not at all (stopped, aborted)."""
    if previous is not None:
        if previous.next == "await_analysis":
            decided = await analysis_wait(store, uid, previous, plan, halt)
            if decided != "go":
                return decided
        if previous.next == "stop":
            failed_stop = previous.failed_count > 0 and plan is not None and plan.on_failure == "stop"
            return "stopped" if failed_stop else "aborted"
        if previous.next == "await_confirm" and not await store.confirmed(uid, number):
            return "aborted" if halt.is_set() else "wait"
        if plan is not None and plan.pause_seconds and not halt.is_set():
            # From the previous batch's end: a restart or a late go-ahead does not pause again.
            until = previous.finished_at + timedelta(seconds=plan.pause_seconds)
            remaining = (until - datetime.now(UTC)).total_seconds()
            if remaining > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(halt.wait(), remaining)
    return "aborted" if halt.is_set() else "go"


ANALYSIS_POLL_SECONDS = 0.25  # how often a batch awaiting analysis looks for its verdict


async def analysis_wait(store: StateStore, uid: str, previous: BatchRecord, plan: RolloutPlanV2 | None,
                        halt: asyncio.Event) -> Gate:
    """Wait for the verdict on ``previous`` (until its deadline, from the batch's end): go, stopped or aborted.

    A verdict received after the deadline does not count, so a restart decides as the first run did.
    """
    deadline = _analysis_deadline(previous, plan)
    while True:
        verdict = await verdict_in_time(store, uid, previous, plan)
        left = (deadline - datetime.now(UTC)).total_seconds()
        decided = analysis_gate(verdict.verdict if verdict else None, seconds_left=left)
        if decided != "wait":
            log.info("update %s: analysis of batch %d: %s (%s)", uid, previous.batch, decided,
                     f"{verdict.verdict} by {verdict.analysed_by}" if verdict else "no verdict in time")
            return "go" if decided == "go" else "stopped"
        if halt.is_set():
            return "aborted"
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(halt.wait(), min(left, ANALYSIS_POLL_SECONDS))


def _analysis_deadline(previous: BatchRecord, plan: RolloutPlanV2 | None) -> datetime:
    timeout = plan.analysis_timeout_seconds if plan is not None and plan.analysis_timeout_seconds else 0.0
    return previous.finished_at + timedelta(seconds=timeout)


async def verdict_in_time(store: StateStore, uid: str, previous: BatchRecord,
                           plan: RolloutPlanV2 | None) -> VerdictRecord | None:
    verdict = await store.verdict(uid, previous.batch)
    return verdict if verdict is not None and verdict.received_at <= _analysis_deadline(previous, plan) else None


async def _analysis_stop_why(store: StateStore, uid: str, previous: BatchRecord | None,
                             plan: RolloutPlanV2 | None) -> str | None:
    if previous is None or previous.next != "await_analysis" or plan is None:
        return None
    verdict = await verdict_in_time(store, uid, previous, plan)
    return analysis_stop_text(previous.batch, verdict if verdict and verdict.verdict == "fail" else None,
                              plan.analysis_timeout_seconds or 0)


async def park(store: StateStore, uid: str, number: int, out: Serialized, halt: asyncio.Event) -> bool:
    """Record that the update waits for a go-ahead for ``number``; False if one (or an abort) came meanwhile.

    Checked again after recording: a go-ahead recorded before this wait was, whose handler
    then found the update still running, would otherwise never be acted on.
    """
    await store.mark_waiting(uid, batch=number, emitted=out.count)
    if not halt.is_set() and not await store.confirmed(uid, number):
        log.info("update %s: waiting for a go-ahead (batch.confirmed) for batch %d", uid, number)
        return True
    await store.reopen(uid)
    return False
