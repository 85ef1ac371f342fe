"""The reducers and the fold on rows in memory, with no database: pure functions of events and rows."""

from __future__ import annotations

import random
from typing import Any

from bus.contract.events import CATALOGUE
from bus.contract.registry import DEFAULT_REGISTRY
from projections.models import CdnDirRow, IpRow, ServerRow, UpdateRow
from projections.view import REDUCERS, MemoryRows, ReducerFailed, ViewLimitError, fold
from tests.projection_support import (
    T0,
    at,
    hot_client_flow,
    hot_server_flow,
    ip_finished,
    item,
)


def _fold(items: list[Any]) -> MemoryRows:
    rows = MemoryRows()
    fold(rows, items)
    return rows


def _values(rows: MemoryRows) -> dict[str, Any]:
    """Every held row's values, by table and key (what a database would hold after writing them)."""
    out: dict[str, Any] = {}
    for updateid, held in rows.updates.items():
        for model, table in held.tables.items():
            for key, row in table.items():
                out[f"{model.__tablename__}{key}"] = {k: v for k, v in vars(row).items() if k != "_stored"}
        assert (updateid,) in held.tables[UpdateRow]
    return out


def test_every_catalogue_event_has_a_reducer_for_its_newest_version():
    assert set(REDUCERS) == {DEFAULT_REGISTRY.latest(model.event_name) for model in CATALOGUE}


def test_a_hot_server_update_folded_in_memory_has_its_stage_counts_and_results():
    flow = hot_server_flow()
    rows = _fold(flow)
    updateid = flow[0][0].updateid
    u = rows.get(UpdateRow, (updateid,))
    assert u is not None
    assert (u.stage, u.status, u.final_result, u.event_count) == ("completed", "failed", False, len(flow))
    assert (u.servers_expected, u.servers_ok, u.servers_failed, u.servers_pending) == (7, 6, 1, 0)
    assert (u.ips_expected, u.ips_ok, u.ips_failed) == (4, 3, 1)
    assert u.requested_by == "alice" and u.pull_requested_at == T0
    qq1 = rows.get(ServerRow, (updateid, "127.0.0.11", "qq_1"))
    assert qq1 is not None and (qq1.group, qq1.ok, qq1.update_status) == ("game", False, False)
    ip11 = rows.get(IpRow, (updateid, "127.0.0.11"))
    assert ip11 is not None and (ip11.reported, ip11.ok, ip11.servers_ok, ip11.servers_failed) == (True, False, 1, 1)


def test_the_same_events_in_any_order_fold_into_the_same_rows():
    flow = hot_server_flow() + hot_client_flow()
    expected = _values(_fold(flow))
    for seed in range(5):
        shuffled = list(flow)
        random.Random(seed).shuffle(shuffled)
        assert _values(_fold(shuffled)) == expected


def test_a_cdn_dirs_own_report_outranks_the_completions_summary_whichever_comes_first():
    request, started, t1, r1, done = hot_client_flow()
    summary = done[0].data["data"]
    lying = at(done[0].model_copy(update={"data": {**done[0].data, "data": [
        summary[0], {**summary[1], "status": True}]}}), 4)
    for order in ([request, started, item(lying), t1, r1], [r1, item(lying), t1, started, request]):
        rows = _fold(order)
        row = rows.get(CdnDirRow, (request[0].updateid, "res.ssss.chuangyunet.com", "r1"))
        assert row is not None and (row.status, row.reported_by) == (False, "hotupdate.cdn_dir.finished.v1")


def test_a_later_ip_report_wins_and_an_earlier_one_changes_nothing():
    flow = hot_server_flow(complete=False)
    request = flow[4][0]
    early = ip_finished(request, "127.0.0.11", "game", {"qq_1": False, "qq_2": False}, offset=30, minutes=5)
    late = ip_finished(request, "127.0.0.11", "game", {"qq_1": True, "qq_2": True}, offset=31, minutes=40)
    a, b = _fold([*flow, item(early), item(late)]), _fold([*flow, item(late), item(early)])
    assert _values(a) == _values(b)
    ip = a.get(IpRow, (request.updateid, "127.0.0.11"))
    assert ip is not None and (ip.ok, ip.servers_ok, ip.servers_failed) == (True, 2, 0)


def test_a_reducer_that_raises_names_its_event_and_the_rows_are_thrown_away():
    flow = hot_server_flow(complete=False)
    bad = ip_finished(flow[4][0], "fe80::1%" + "x" * 200, "game", {"qq_9": True}, offset=40, minutes=9)
    rows = MemoryRows()
    try:
        fold(rows, [*flow, item(bad)])
    except ReducerFailed as failed:
        assert failed.index == len(flow) and isinstance(failed.error, ViewLimitError)
    else:
        raise AssertionError("the reducer did not raise")


def test_changes_are_new_rows_first_then_only_the_rows_that_changed():
    flow = hot_server_flow(complete=False)
    rows = _fold(flow[:6])
    first = rows.changes()
    assert len(first.new[UpdateRow]) == 1 and len(first.new[ServerRow]) == 7 and not first.changed
    fold(rows, [flow[6]])  # one IP's report: its IP row, its servers' rows and the update change
    second = rows.changes()
    assert not second.new
    assert set(second.changed) == {UpdateRow, IpRow, ServerRow}
    assert rows.changes().new == {} and rows.changes().changed == {}
