"""The projection's status view from hand-built event sequences: order, duplicates, failures, on both databases."""

from __future__ import annotations

import random
from datetime import timedelta

import pytest
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from bus.contract.events import CATALOGUE, IpFinished, ReleaseAnnounced, ReleaseFile, UpdateCompleted
from bus.contract.registry import DEFAULT_REGISTRY, make_envelope
from bus.handling import child_envelope
from projections import view
from projections.ingest import ConflictingDuplicate, ingest_batch
from projections.models import AppliedEvent, CdnDirRow, FileRow, IpRow, LoggedEvent, ServerRow, UpdateRow
from projections.view import ViewLimitError
from tests.projection_support import (
    T0,
    at,
    control_events,
    hot_client_flow,
    hot_server_flow,
    ip_finished,
    item,
    migrated_engine,
)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def engine(request, tmp_path):
    url = f"sqlite:///{tmp_path / 'projection.db'}" if request.param == "sqlite" else request.getfixturevalue(
        "postgres_url")
    eng = migrated_engine(url)
    yield eng
    eng.dispose()


def _update(engine, updateid):
    with Session(engine) as s:
        row = s.get(UpdateRow, updateid)
        assert row is not None
        s.expunge(row)
        return row


def _snapshot(engine):
    with Session(engine) as s:
        return view.snapshot(s)


def test_every_catalogue_event_has_a_reducer_for_its_newest_version():
    assert set(view.REDUCERS) == {DEFAULT_REGISTRY.latest(model.event_name) for model in CATALOGUE}


def test_a_whole_hot_server_update_gives_its_stage_counts_and_who_asked(engine):
    flow = hot_server_flow()
    outcomes = ingest_batch(engine, flow)
    assert [o.status for o in outcomes] == ["appended"] * len(flow)
    assert [o.position for o in outcomes] == list(range(1, len(flow) + 1))

    u = _update(engine, flow[0][0].updateid)
    assert (u.project, u.area, u.update_type, u.version) == ("ssss", "cn", "hot_server", "004200000")
    assert (u.stage, u.status, u.final_result) == ("completed", "failed", False)
    assert u.requested_by == "alice" and u.push_requested_by == "bob" and u.update_requested_by == "bob"
    assert u.pull_requested_source == "hotupdate/cmdb" and u.area_name == "大陆"
    assert (u.servers_expected, u.servers_ok, u.servers_failed, u.servers_pending) == (7, 6, 1, 0)
    assert (u.ips_expected, u.ips_ok, u.ips_failed, u.ips_pending) == (4, 3, 1, 0)
    assert (u.targets_requested, u.targets_ok, u.targets_failed) == (1, 1, 0)
    assert u.files_count == 2 and u.total_bytes == 20642 and u.event_count == len(flow)
    assert u.erlang_cmd_list == ["c:l(role_server)."] and u.ops_manager == "ops1"
    assert u.pull_requested_at.replace(tzinfo=T0.tzinfo) == T0
    assert u.completed_at is not None and u.started_at is not None

    with Session(engine) as s:
        qq1 = s.get_one(ServerRow, (u.updateid, "127.0.0.11", "qq_1"))
        assert (qq1.group, qq1.ok, qq1.update_status, qq1.erl_status) == ("game", False, False, False)
        assert qq1.update_text == "更新失败,不执行erl命令"
        ip11 = s.get_one(IpRow, (u.updateid, "127.0.0.11"))
        assert (ip11.reported, ip11.ok, ip11.servers_ok, ip11.servers_failed) == (True, False, 1, 1)
        files = s.scalars(select(FileRow).order_by(FileRow.file_name)).all()
        assert [(f.file_name, f.pulled, f.pushed, f.in_update) for f in files] == [
            ("config/skill.config", True, True, True), ("ebin/role_server.beam", True, True, True)]


def test_a_hot_client_update_counts_cdn_dirs_and_the_dirs_own_report_outranks_the_summary(engine):
    flow = hot_client_flow()
    request, started, t1, r1, done = flow
    # the summary claims r1 succeeded, its own report says it failed: the dir's own report wins, in any order
    summary = done[0].data["data"]
    lying = at(done[0].model_copy(update={"data": {**done[0].data, "data": [
        summary[0], {**summary[1], "status": True}]}}), 4)
    ingest_batch(engine, [request, started, item(lying), t1])
    ingest_batch(engine, [r1])
    u = _update(engine, request[0].updateid)
    assert (u.cdn_dirs_expected, u.cdn_dirs_ok, u.cdn_dirs_failed, u.cdn_dirs_pending) == (2, 1, 1, 0)
    assert (u.stage, u.status) == ("completed", "failed")
    with Session(engine) as s:
        r1_row = s.get_one(CdnDirRow, (u.updateid, "res.ssss.chuangyunet.com", "r1"))
        assert (r1_row.status, r1_row.data, r1_row.reported_by) == (
            False, "rsync: connection refused", "hotupdate.cdn_dir.finished.v1")


def test_ip_finished_before_update_started_gives_the_same_view_as_in_order(engine, tmp_path):
    flow = hot_server_flow(complete=False)
    started = flow[5]
    firsts = [x for x in flow if isinstance(x[1], IpFinished)]
    rest = [x for x in flow if x is not started and x not in firsts]
    ingest_batch(engine, firsts)
    u = _update(engine, flow[0][0].updateid)
    assert (u.stage, u.status) == ("started", "in_progress")  # results imply it started
    assert u.started_at is None and (u.servers_ok, u.servers_failed) == (6, 1)
    ingest_batch(engine, [started, *rest])

    ordered = migrated_engine(f"sqlite:///{tmp_path / 'ordered.db'}")
    ingest_batch(ordered, flow)
    assert _snapshot(engine) == _snapshot(ordered)


def test_any_order_and_any_batching_with_duplicates_give_the_same_view(engine, tmp_path):
    server = hot_server_flow()
    flow = server + hot_client_flow() + [item(e) for e in control_events(server[4][0]).values()]
    reference = migrated_engine(f"sqlite:///{tmp_path / 'reference.db'}")
    ingest_batch(reference, flow)
    expected = _snapshot(reference)

    rng = random.Random(5)
    shuffled = flow + rng.sample(flow, 6)  # six redeliveries
    rng.shuffle(shuffled)
    position = 0
    while position < len(shuffled):  # batches of 1 to 5
        size = rng.randint(1, 5)
        ingest_batch(engine, shuffled[position:position + size])
        position += size
    assert _snapshot(engine) == expected
    with Session(engine) as s:
        assert s.scalar(select(LoggedEvent.position).order_by(LoggedEvent.position.desc()).limit(1)) == len(flow)


@pytest.mark.parametrize("seed", range(12))
def test_permutations_of_one_update_give_the_same_view(seed, tmp_path):
    flow = hot_server_flow()
    flow += [item(e) for e in control_events(flow[4][0]).values()]
    reference = migrated_engine(f"sqlite:///{tmp_path / 'reference.db'}")
    ingest_batch(reference, flow)
    permuted = migrated_engine(f"sqlite:///{tmp_path / 'permuted.db'}")
    order = flow[:]
    random.Random(seed).shuffle(order)
    for x in order:
        ingest_batch(permuted, [x])
    assert _snapshot(permuted) == _snapshot(reference)


def test_a_redelivered_event_changes_nothing(engine):
    flow = hot_server_flow()
    ingest_batch(engine, flow)
    before = _snapshot(engine)
    outcomes = ingest_batch(engine, [flow[3], flow[7], flow[7]])
    assert [o.status for o in outcomes] == ["duplicate"] * 3
    assert [o.position for o in outcomes] == [4, 8, 8]
    assert _snapshot(engine) == before


def test_the_same_event_twice_in_one_batch_is_logged_and_applied_once(engine):
    flow = hot_server_flow()
    outcomes = ingest_batch(engine, [flow[0], flow[0]])
    assert [o.status for o in outcomes] == ["appended", "duplicate"]
    assert _update(engine, flow[0][0].updateid).event_count == 1


def test_an_event_id_reused_with_another_payload_is_refused(engine):
    env, event = hot_server_flow()[0]
    ingest_batch(engine, [(env, event)])
    forged = env.model_copy(update={"data": {**env.data, "requested_by": "mallory"}})
    (outcome,) = ingest_batch(engine, [item(forged)])
    assert outcome.status == "failed" and isinstance(outcome.error, ConflictingDuplicate)
    assert _update(engine, env.updateid).requested_by == "alice"


def test_a_later_report_for_the_same_ip_wins_whatever_order_they_arrive_in(engine, tmp_path):
    flow = hot_server_flow(complete=False)
    request = flow[4][0]
    first = ip_finished(request, "127.0.0.11", "game", {"qq_1": False, "qq_2": True}, offset=2, minutes=6)
    retry = ip_finished(request, "127.0.0.11", "game", {"qq_1": True, "qq_2": True}, offset=20, minutes=30,
                        note="retried")
    retry = retry.model_copy(update={"id": "retry-of-127-0-0-11"})
    ingest_batch(engine, [*flow[:6], item(retry), item(first)])
    other = migrated_engine(f"sqlite:///{tmp_path / 'other.db'}")
    ingest_batch(other, [*flow[:6], item(first), item(retry)])
    for eng in (engine, other):
        with Session(eng) as s:
            qq1 = s.get_one(ServerRow, (request.updateid, "127.0.0.11", "qq_1"))
            assert (qq1.ok, qq1.update_text) == (True, "retried")
            assert s.get_one(IpRow, (request.updateid, "127.0.0.11")).ok is True
    assert _snapshot(engine) == _snapshot(other)


def test_one_bad_event_does_not_undo_the_rest_of_its_batch(engine):
    flow = hot_server_flow(complete=False)
    request = flow[4][0]
    bad = ip_finished(request, "fe80::1%" + "x" * 200, "game", {"qq_9": True}, offset=40, minutes=9)
    outcomes = ingest_batch(engine, [*flow[:3], item(bad), *flow[3:]])
    assert [o.status for o in outcomes].count("appended") == len(flow)
    failed = outcomes[3]
    assert failed.status == "failed" and isinstance(failed.error, ViewLimitError)
    assert failed.position == 4  # logged (the log keeps every event) but not applied
    u = _update(engine, request.updateid)
    assert u.event_count == len(flow) and u.ips_expected == 4
    with Session(engine) as s:
        assert s.get(AppliedEvent, bad.id) is None
        assert s.get(LoggedEvent, 4).event_id == bad.id


def test_an_event_whose_reducer_failed_is_applied_when_retried(engine, monkeypatch):
    flow = hot_server_flow()
    completed = flow[-1]
    calls = []

    def broken(session, update, env, event):
        calls.append(env.id)
        raise RuntimeError("reducer bug")

    original = view.REDUCERS[UpdateCompleted]
    monkeypatch.setitem(view.REDUCERS, UpdateCompleted, broken)  # type: ignore[arg-type]
    outcomes = ingest_batch(engine, flow)
    assert outcomes[-1].status == "failed" and outcomes[-1].position == len(flow)
    assert _update(engine, completed[0].updateid).stage == "started"
    monkeypatch.setitem(view.REDUCERS, UpdateCompleted, original)  # type: ignore[arg-type]
    (retry,) = ingest_batch(engine, [completed])
    assert (retry.status, retry.position) == ("applied_late", len(flow))
    u = _update(engine, completed[0].updateid)
    assert (u.stage, u.status, u.event_count) == ("completed", "failed", len(flow))


def test_a_pull_failure_fails_the_update_and_a_later_success_at_the_same_step_outranks_it(engine):
    from bus.contract.events import PullFailed

    flow = hot_server_flow()
    pull = flow[0][0]
    failed = at(child_envelope(pull, PullFailed(update_type="hot_server", version="004200000", reason="unreadable",
                                                detail="permission denied"),
                               source="hotupdate/file_pull/recv1", offset=1), 0.5)
    ingest_batch(engine, [flow[0], item(failed)])
    u = _update(engine, pull.updateid)
    assert (u.stage, u.status, u.pull_failure) == ("pull_failed", "failed", "unreadable: permission denied")
    ingest_batch(engine, [flow[1]])
    assert _update(engine, pull.updateid).stage == "pulled"


def test_free_text_with_nul_and_markup_is_stored_as_text(engine):
    flow = hot_server_flow(complete=False)
    request = flow[4][0]
    nasty = ip_finished(request, "127.0.0.12", "game", {"qq_3": False}, offset=9, minutes=9,
                        note="<script>alert(1)</script>\x00end").model_copy(update={"id": "nasty-1"})
    outcomes = ingest_batch(engine, [*flow, item(nasty)])
    assert all(o.status == "appended" for o in outcomes)
    with Session(engine) as s:
        row = s.get_one(ServerRow, (request.updateid, "127.0.0.12", "qq_3"))
        assert row.update_text == "<script>alert(1)</script>\ufffdend"


def test_times_in_other_zones_are_stored_as_utc(engine):
    from datetime import timezone

    env, event = hot_server_flow()[0]
    shanghai = env.model_copy(update={"time": (T0 + timedelta(hours=1)).astimezone(timezone(timedelta(hours=8)))})
    ingest_batch(engine, [(shanghai, event)])
    u = _update(engine, env.updateid)
    assert u.pull_requested_at.replace(tzinfo=None) == (T0 + timedelta(hours=1)).replace(tzinfo=None)


def test_migrations_match_the_models(engine):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from domain.db import Base

    with engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    ours = [d for d in diffs if "projection_" in repr(d)]
    assert ours == []
    with engine.connect() as conn:
        assert conn.execute(text("select position, version from projection_head")).one() == (0, 0)


def _completed(request, *, outcome, final_result, not_run=(), offset=40, minutes=40, failed=0):
    return item(at(child_envelope(request, UpdateCompleted(
        update_type="hot_server", version="004200000", final_result=final_result, final_data=outcome,
        outcome=outcome, not_run=list(not_run), ok_count=0, failed_count=failed,
    ), source="hotupdate/ops_executor/ops1", offset=offset), minutes))


def test_a_failed_batch_under_confirm_waits_for_the_go_ahead_then_goes_on(engine):
    flow = hot_server_flow(complete=False)
    request = flow[4][0]
    control = control_events(request)
    ingest_batch(engine, [*flow[:8], item(control["batch1"])])
    u = _update(engine, request.updateid)
    assert (u.status, u.awaiting_batch, u.batches_total, u.batches_finished) == ("awaiting_confirm", 2, 2, 1)
    ingest_batch(engine, [item(control["confirm2"])])
    assert _update(engine, request.updateid).status == "in_progress"
    ingest_batch(engine, [*flow[8:], item(control["batch2"]), _completed(request, outcome="failed",
                                                                         final_result=False, failed=1)])
    u = _update(engine, request.updateid)
    assert (u.status, u.awaiting_batch, u.batches_finished) == ("failed", None, 2)


def test_an_aborted_update_counts_what_never_started_as_not_run_not_silent(engine, tmp_path):
    flow = hot_server_flow(complete=False)
    request = flow[4][0]
    abort = item(control_events(request)["abort"])
    done = _completed(request, outcome="aborted", final_result=False,
                      not_run=["127.0.0.12", "127.0.0.21/cross", "127.0.0.31", "bogus/name/x"])
    events = [*flow[:7], abort, done]
    ingest_batch(engine, events)
    u = _update(engine, request.updateid)
    assert (u.stage, u.status, u.outcome) == ("completed", "aborted", "aborted")
    assert (u.ips_ok, u.ips_failed, u.ips_pending, u.ips_not_run) == (0, 1, 0, 3)
    assert (u.servers_ok, u.servers_failed, u.servers_pending, u.servers_not_run) == (1, 1, 0, 5)
    assert u.abort_requested_by == "erin" and u.abort_reason == "wrong build"
    reversed_order = migrated_engine(f"sqlite:///{tmp_path / 'reversed.db'}")
    ingest_batch(reversed_order, list(reversed(events)))
    assert _snapshot(reversed_order) == _snapshot(engine)


def test_a_stall_report_marks_the_update_stalled_until_it_progresses(engine):
    flow = hot_server_flow(complete=False)
    request = flow[4][0]
    stalled = control_events(request)["stalled"]
    ingest_batch(engine, [*flow[:9], item(stalled)])
    u = _update(engine, request.updateid)
    assert u.status == "stalled" and u.silent_targets == ["127.0.0.31"] and u.stalled_after_seconds == 600
    late = ip_finished(request, "127.0.0.31", "cross_center", {"center_1": True}, offset=9, minutes=31)
    ingest_batch(engine, [item(late)])
    assert _update(engine, request.updateid).status == "in_progress"


def test_a_retry_is_linked_to_the_update_it_was_made_from(engine):
    from bus.contract.events import UpdateRequested
    from bus.contract.registry import make_envelope
    from tests.projection_support import FILES

    flow = hot_server_flow()
    parent = flow[0][0].updateid
    retry = make_envelope(
        UpdateRequested(update_type="hot_server", version="004200000", ops_manager="ops1", update_file_list=FILES,
                        requested_by="bob", update_server_list={"game": {"127.0.0.11": ["qq_1"]}},
                        parent_id=parent, relation="retry_failed"),
        source="hotupdate/cmdb", updateid="retry-1", project="ssss", area="cn", sequence=1,
    )
    ingest_batch(engine, [*flow, item(retry)])
    u = _update(engine, "retry-1")
    assert (u.parent_updateid, u.relation, u.servers_expected) == (parent, "retry_failed", 1)
    from projections.detail import update_detail

    with Session(engine) as s:
        detail = update_detail(s, parent)
    assert [c.updateid for c in detail.children] == ["retry-1"]


def test_a_re_emitted_event_with_a_new_time_and_sequence_is_a_duplicate(engine):
    from datetime import timedelta

    env, event = hot_server_flow()[0]
    ingest_batch(engine, [(env, event)])
    again = env.model_copy(update={"time": env.time + timedelta(minutes=3), "sequence": env.sequence + 4})
    (outcome,) = ingest_batch(engine, [item(again)])
    assert outcome.status == "duplicate"
    assert _update(engine, env.updateid).event_count == 1


def test_an_announced_release_is_the_first_stage_of_the_update_its_pull_starts(engine):
    flow = hot_server_flow(complete=False)
    release = at(make_envelope(
        ReleaseAnnounced(update_type="hot_server", version="004200000", announced_by="ssss-build",
                         files=[ReleaseFile(file_name="ebin/role_server.beam",
                                            file_md5="abe347d3fdff45f1078102c4637852a5")]),
        source="ci/ssss-build", updateid=flow[0][0].updateid, project="ssss", area="cn", sequence=0), -1)
    ingest_batch(engine, [item(release)])
    u = _update(engine, release.updateid)
    assert (u.stage, u.status, u.update_type, u.version) == ("release_announced", "in_progress", "hot_server",
                                                             "004200000")
    ingest_batch(engine, flow[:1])
    assert _update(engine, release.updateid).stage == "pull_requested"
