"""How the CMDB names an update's targets (as the executor does) and which servers a retry takes."""

from __future__ import annotations

from typing import Any

from producers.cmdb.expected import expected_targets, failed_or_unrun, ip_target_name, missing_targets
from producers.cmdb.models import HotUpdate, TargetResult

SERVERS = {
    "game": {"10.0.0.1": ["s1", "s2"], "10.0.0.2": ["s3"]},
    "cross": {"10.0.0.2": ["c1"], "10.0.0.3": ["c2"]},
}


def _update(**fields: Any) -> HotUpdate:
    return HotUpdate(id="u1", update_type="hot_server", update_targets={"update_server_list": SERVERS}, **fields)


def _result(target: str, group: str, ok: dict[str, bool]) -> TargetResult:
    results = {s: {"data": "ok" if good else "erl失败", "status": good} for s, good in ok.items()}
    return TargetResult(update_id="u1", kind="ip", target=target, ok=all(ok.values()),
                        detail={"group": group, "update_data": results, "erl_data": results})


def test_an_ip_in_several_groups_is_named_ip_slash_group_and_others_by_ip():
    assert expected_targets(_update()) == ["10.0.0.1", "10.0.0.2/game", "10.0.0.2/cross", "10.0.0.3"]
    assert ip_target_name(SERVERS, "10.0.0.2", "cross") == "10.0.0.2/cross"
    assert ip_target_name(SERVERS, "10.0.0.1", "game") == "10.0.0.1"


def test_missing_targets_leave_out_reported_and_not_run_ones():
    update = _update(not_run=["10.0.0.3"])
    assert missing_targets(update, {"10.0.0.1", "10.0.0.2/game"}) == ["10.0.0.2/cross"]


def test_a_hot_client_update_names_cdn_dirs_by_root_and_dir():
    update = HotUpdate(id="u2", update_type="hot_client", update_targets={"data": [
        {"cdn_root_url": "res.example.com", "cdn_dir": "t1"}, {"cdn_root_url": "res.example.com", "cdn_dir": "s1"},
    ]})
    assert expected_targets(update) == ["res.example.com/t1", "res.example.com/s1"]


def test_a_retry_takes_failed_servers_and_whole_not_run_or_silent_targets():
    update = _update(not_run=["10.0.0.2/cross"])
    results = [_result("10.0.0.1", "game", {"s1": True, "s2": False}), _result("10.0.0.2/game", "game", {"s3": True})]
    # s2 failed; 10.0.0.2/cross was not run; 10.0.0.3 never reported
    assert failed_or_unrun(update, results) == {
        "update_server_list": {"game": {"10.0.0.1": ["s2"]}, "cross": {"10.0.0.2": ["c1"], "10.0.0.3": ["c2"]}}
    }


def test_nothing_to_retry_when_everything_succeeded():
    results = [_result("10.0.0.1", "game", {"s1": True, "s2": True}), _result("10.0.0.2/game", "game", {"s3": True}),
               _result("10.0.0.2/cross", "cross", {"c1": True}), _result("10.0.0.3", "cross", {"c2": True})]
    assert failed_or_unrun(_update(), results) == {"update_server_list": {}}
