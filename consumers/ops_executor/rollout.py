"""Rolling an update out in batches: how targets are split, what follows a batch, how it all ends.

Pure functions, so the executor's decisions can be read (and tested) apart from the running.
Targets are IPs (hot_server) or CDN dirs (hot_client), in the order *update started* lists them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, TypeVar

from bus.contract.events import Outcome, RolloutPlanV2
from consumers.ops_executor.records import AbortRecord, BatchNext, VerdictRecord

T = TypeVar("T")

ALL_DONE = "全部完成"  # the seed's final_data on success
SHOWN = 20  # targets named in a final_data text; the rest are counted


def batch_size(count: int, plan: RolloutPlanV2 | None) -> int:
    """Targets per batch: the plan's count, or its percentage of ``count`` rounded up (at least 1)."""
    if plan is None or (plan.batch_size is None and plan.batch_percent is None):
        return max(count, 1)
    if plan.batch_size is not None:
        return plan.batch_size
    assert plan.batch_percent is not None
    return max(1, math.ceil(count * plan.batch_percent / 100))


def plan_batches(targets: Sequence[T], plan: RolloutPlanV2 | None) -> list[list[T]]:
    """``targets`` cut into consecutive batches, in order; no plan (or no size): one batch."""
    size = batch_size(len(targets), plan)
    return [list(targets[i:i + size]) for i in range(0, len(targets), size)] or [[]]


def next_step(number: int, total: int, *, failed: bool, halted: bool, plan: RolloutPlanV2 | None) -> BatchNext:
    """What follows batch ``number`` of ``total``: the last is "done"; an abort stops; a failure obeys the plan."""
    if number >= total:
        return "done"
    if halted:
        return "stop"
    if not failed or plan is None or plan.on_failure == "continue":
        # the analysis step gates only a rollout that would go on by itself
        return "await_analysis" if plan is not None and plan.analysis_timeout_seconds else "continue"
    return "stop" if plan.on_failure == "stop" else "await_confirm"


def analysis_gate(verdict: str | None, *, seconds_left: float) -> Literal["go", "stop", "wait"]:
    """After a batch that awaits analysis: ``pass`` goes on; ``fail``, or no verdict in time, stops."""
    if verdict == "pass":
        return "go"
    if verdict == "fail" or seconds_left <= 0:
        return "stop"
    return "wait"


def analysis_stop_text(batch: int, verdict: VerdictRecord | None, timeout: float) -> str:
    """Why the rollout stopped after ``batch``'s analysis, for ``final_data``."""
    if verdict is None:
        return f"第{batch}批分析超时({timeout:g}s无结论), 已停止"
    reason = f": {verdict.reason}" if verdict.reason else ""
    link = f" {verdict.link}" if verdict.link else ""
    return f"第{batch}批分析未通过({verdict.analysed_by}{reason}{link}), 已停止"


def outcome_of(*, aborted: bool, stopped: bool, failed: int) -> Outcome:
    """aborted (an abort kept something from starting) > stopped (a failed batch ended it) > failed > succeeded."""
    if aborted:
        return "aborted"
    if stopped:
        return "stopped"
    return "failed" if failed else "succeeded"


def shown(items: Sequence[str]) -> str:
    """The first :data:`SHOWN` items, and how many there are when there are more."""
    text = ", ".join(items[:SHOWN])
    return text + (f" 等{len(items)}个" if len(items) > SHOWN else "")


def summary(failed: Sequence[str], total: int) -> str:
    """The seed's ``final_data``: "全部完成", or how many failed and which."""
    if not failed:
        return ALL_DONE
    return f"{len(failed)}/{total} 失败: {shown(failed)}"


def completion_text(outcome: Outcome, *, failed: Sequence[str], total: int, not_run: Sequence[str],
                    stopped_after: int | None, abort: AbortRecord | None, stop_why: str | None = None) -> str:
    """``final_data`` for an update: the seed's text, then why and what did not run, if anything."""
    if outcome in ("succeeded", "failed"):
        return summary(failed, total)
    head = summary(failed, total) if failed else f"{total}个完成"
    if outcome == "stopped":
        why = stop_why or f"第{stopped_after}批失败, 已停止"
    else:
        who = abort.requested_by if abort is not None else "?"
        reason = f": {abort.reason}" if abort is not None and abort.reason else ""
        why = f"已中止({who}{reason})"
    rest = f", {len(not_run)}个未执行: {shown(list(not_run))}" if not_run else ""
    return f"{head}; {why}{rest}"
