"""Batch planning and the decisions after a batch: pure functions of the plan and the results."""

from __future__ import annotations

import pytest

from bus.contract.events import RolloutPlanV2
from consumers.ops_executor.hot_server import ip_units, unit_batches
from consumers.ops_executor.records import AbortRecord
from consumers.ops_executor.rollout import completion_text, next_step, outcome_of, plan_batches

IPS = [f"10.0.0.{i}" for i in range(1, 11)]


def test_no_plan_or_no_size_is_one_batch():
    assert plan_batches(IPS, None) == [IPS]
    assert plan_batches(IPS, RolloutPlanV2(on_failure="confirm")) == [IPS]


def test_batches_by_count_keep_the_order_and_the_last_takes_the_rest():
    assert [len(b) for b in plan_batches(IPS, RolloutPlanV2(batch_size=3))] == [3, 3, 3, 1]
    assert [ip for batch in plan_batches(IPS, RolloutPlanV2(batch_size=3)) for ip in batch] == IPS
    assert plan_batches(IPS, RolloutPlanV2(batch_size=50)) == [IPS]


@pytest.mark.parametrize("percent,sizes", [(30, [3, 3, 3, 1]), (25, [3, 3, 3, 1]), (50, [5, 5]), (1, [1] * 10),
                                           (100, [10]), (15, [2, 2, 2, 2, 2])])
def test_batches_by_percentage_round_up_to_at_least_one(percent, sizes):
    assert [len(b) for b in plan_batches(IPS, RolloutPlanV2(batch_percent=percent))] == sizes


def test_an_ip_serving_several_groups_goes_in_one_batch_with_all_its_units():
    units = ip_units({"game": {"10.0.0.1": ["a"], "10.0.0.2": ["b"]}, "cross": {"10.0.0.1": ["c"], "10.0.0.3": ["d"]}})
    batches = unit_batches(units, RolloutPlanV2(batch_size=2))
    assert [[u.key for u in b] for b in batches] == [["10.0.0.1/game", "10.0.0.2", "10.0.0.1/cross"], ["10.0.0.3"]]


@pytest.mark.parametrize("on_failure,after_failure", [("stop", "stop"), ("continue", "continue"),
                                                      ("confirm", "await_confirm")])
def test_what_follows_a_batch(on_failure, after_failure):
    plan = RolloutPlanV2(batch_size=3, on_failure=on_failure)
    assert next_step(1, 4, failed=False, halted=False, plan=plan) == "continue"
    assert next_step(2, 4, failed=True, halted=False, plan=plan) == after_failure
    assert next_step(4, 4, failed=True, halted=False, plan=plan) == "done"  # nothing left to stop or confirm
    assert next_step(2, 4, failed=False, halted=True, plan=plan) == "stop"  # an abort


def test_outcome_prefers_aborted_then_stopped_then_failed():
    assert outcome_of(aborted=True, stopped=True, failed=1) == "aborted"
    assert outcome_of(aborted=False, stopped=True, failed=1) == "stopped"
    assert outcome_of(aborted=False, stopped=False, failed=1) == "failed"
    assert outcome_of(aborted=False, stopped=False, failed=0) == "succeeded"


def test_completion_text_says_why_and_what_did_not_run():
    assert completion_text("succeeded", failed=[], total=3, not_run=[], stopped_after=None, abort=None) == "全部完成"
    stopped = completion_text("stopped", failed=["10.0.0.5/qq_5(erl失败)"], total=6, not_run=IPS[6:],
                              stopped_after=2, abort=None)
    assert stopped == ("1/6 失败: 10.0.0.5/qq_5(erl失败); 第2批失败, 已停止, "
                       "4个未执行: 10.0.0.7, 10.0.0.8, 10.0.0.9, 10.0.0.10")
    aborted = completion_text("aborted", failed=[], total=2, not_run=["10.0.0.3"], stopped_after=None,
                              abort=AbortRecord("alice", "bad build"))
    assert aborted == "2个完成; 已中止(alice: bad build), 1个未执行: 10.0.0.3"


def test_ips_are_batched_in_address_order_whatever_the_order_of_the_request_keys():
    # On the bus JSON objects have sorted keys, so "10.0.0.10" arrives before "10.0.0.2".
    as_text = dict(sorted({ip: [f"qq_{i}"] for i, ip in enumerate(IPS, 1)}.items()))
    units = ip_units({"game": as_text})
    assert [u.ip for u in units] == IPS
    assert [[u.ip for u in b] for b in unit_batches(units, RolloutPlanV2(batch_size=3))] == [
        IPS[0:3], IPS[3:6], IPS[6:9], IPS[9:]]
