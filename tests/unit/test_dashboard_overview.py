"""What the dashboard shows at a glance: progress per update (of what applies to its type), running
updates first, durations, updates per day by outcome, an update's targets by finish time; and the
accessibility fixes that need no browser (Chinese marked, failures in words, no dead links, an icon)."""

from __future__ import annotations

import re
from datetime import date, timedelta

import httpx
import pytest
from sqlalchemy.orm import Session

from projections import queries, trends
from projections.dashboard import charts, create_app
from projections.dashboard.render import lang_attribute, mark_chinese
from projections.ingest import ingest_batch, record_rejection
from projections.schemas import UpdateFilters
from tests.projection_support import (
    DASHBOARD_AUTH,
    T0,
    Item,
    dashboard_access,
    hot_client_flow,
    hot_server_flow,
    item,
    migrated_engine,
)

SERVER_DONE = "350cf0ef-c12e-4bcc-d0df-369a09a4a357"
SERVER_RUNNING = "5e000000-0000-4000-8000-00000000001a"
CLIENT_DONE = "c1b2c3d4-0000-4000-8000-000000000001"
CLIENT_RUNNING = "c1b2c3d4-0000-4000-8000-0000000000aa"
GONE = "9a9e0000-0000-4000-8000-000000000000"


def later(items: list[Item], minutes: float) -> list[Item]:
    return [item(env.model_copy(update={"time": env.time + timedelta(minutes=minutes)})) for env, _ in items]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request, tmp_path):
    url = f"sqlite:///{tmp_path / 'projection.db'}" if request.param == "sqlite" else request.getfixturevalue(
        "postgres_url")
    engine = migrated_engine(url)
    ingest_batch(engine, hot_server_flow())  # day 0, 1 of 7 servers failed
    ingest_batch(engine, later(hot_server_flow(updateid=SERVER_RUNNING, project="snqxz", complete=False)[:8],
                               -60 * 24))  # day -1, still running: 2 of 4 IPs reported
    ingest_batch(engine, later(hot_client_flow(), 60 * 24 * 2))  # day +2, failed
    ingest_batch(engine, later(hot_client_flow(updateid=CLIENT_RUNNING)[:3], 30))  # day 0, 1 of 2 dirs
    for n, updateid in enumerate((GONE, SERVER_DONE)):
        record_rejection(engine, service="projection", reason=f"invalid: 数据无效 {n}",
                         body=f'{{"id": "r{n}", "updateid": "{updateid}"}}'.encode(),
                         routing_key="ssss.cn.ip.finished.v1", message_id=f"m-{n}", attempt=1, parked_at=T0)
    engine.dispose()
    return url


@pytest.fixture
def session(database_url):
    engine = migrated_engine(database_url)
    with Session(engine) as s:
        yield s
    engine.dispose()


@pytest.fixture
async def client(database_url):
    app = create_app(database_url, access=dashboard_access())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://dash",
                                 headers=DASHBOARD_AUTH) as c:
        yield c
    app.state.engine.dispose()


def test_each_update_shows_the_progress_of_what_its_type_updates(session):
    by_id = {u.updateid: u for u in queries.list_updates(session, UpdateFilters()).items}
    client = by_id[CLIENT_RUNNING].progress
    assert client is not None and (client.unit, client.done, client.ok, client.failed, client.expected) == (
        "cdn_dirs", 1, 1, 0, 2)
    server = by_id[SERVER_RUNNING].progress
    assert server is not None and (server.unit, server.done, server.failed, server.expected) == ("servers", 4, 1, 7)
    done = by_id[SERVER_DONE].progress
    assert done is not None and (done.done, done.expected) == (7, 7)


def test_running_updates_come_first_on_every_page(session):
    whole = [u.updateid for u in queries.list_updates(session, UpdateFilters()).items]
    # running first (most recently active first among them), then the rest likewise
    assert whole == [CLIENT_RUNNING, SERVER_RUNNING, CLIENT_DONE, SERVER_DONE]
    for size in (1, 2, 3):
        pages = [queries.list_updates(session, UpdateFilters(page=p, page_size=size)) for p in range(1, 5)]
        assert [u.updateid for page in pages for u in page.items] == whole
        assert {page.total for page in pages} == {4}
    only_done = queries.list_updates(session, UpdateFilters(status="failed"))
    assert [u.updateid for u in only_done.items] == [CLIENT_DONE, SERVER_DONE]


def test_a_finished_update_has_a_duration_and_a_running_one_a_start(session):
    by_id = {u.updateid: u for u in queries.list_updates(session, UpdateFilters()).items}
    done, running = by_id[SERVER_DONE], by_id[SERVER_RUNNING]
    assert (done.running, done.started_at, done.finished_at) == (False, T0 + timedelta(minutes=5),
                                                                 T0 + timedelta(minutes=10))
    assert done.duration_seconds == 300.0  # update started → completed
    assert running.running and running.finished_at is None and running.duration_seconds is None
    assert running.started_at == T0 + timedelta(minutes=5 - 60 * 24)


def test_updates_per_day_count_each_day_by_outcome(session):
    days = trends.updates_per_day(session, UpdateFilters())
    assert len(days) == trends.CHART_DAYS and days[-1].day == (T0 + timedelta(days=2)).date()
    counts = {d.day: d.counts for d in days if d.total}
    assert counts == {
        T0.date() - timedelta(days=1): {"succeeded": 0, "failed": 0, "stopped": 0, "running": 1},
        T0.date(): {"succeeded": 0, "failed": 1, "stopped": 0, "running": 1},
        T0.date() + timedelta(days=2): {"succeeded": 0, "failed": 1, "stopped": 0, "running": 0},
    }
    snqxz = trends.updates_per_day(session, UpdateFilters(), projects=["snqxz"])
    assert sum(d.total for d in snqxz) == 1 and snqxz[-1].day == T0.date() - timedelta(days=1)
    assert trends.updates_per_day(session, UpdateFilters(project="nobody")) == []


def test_an_updates_targets_are_counted_by_finish_time_from_its_start(session):
    started = T0 + timedelta(minutes=5)
    ips = trends.finish_bins(session, SERVER_DONE, "servers", started)  # IPs at +1, +2, +3, +4 min
    assert ips is not None and (ips.start, ips.span_seconds, ips.reported, ips.failed) == (started, 240.0, 4, 1)
    assert {n: b for n, b in enumerate(ips.bins) if b != (0, 0)} == {5: (0, 1), 10: (1, 0), 15: (1, 0), 19: (1, 0)}
    assert [(f.name, f.ok, round(s)) for f, s in ips.slowest] == [
        ("127.0.0.31", True, 240), ("127.0.0.21", True, 180), ("127.0.0.12", True, 120), ("127.0.0.11", False, 60)]
    dirs = trends.finish_bins(session, CLIENT_DONE, "cdn_dirs", None)  # from the first report: t1, then r1
    assert dirs is not None and (dirs.span_seconds, dirs.bins[0], dirs.bins[-1]) == (60.0, (1, 0), (0, 1))
    assert [f.name for f, _ in dirs.slowest] == ["res.ssss.chuangyunet.com/r1", "res.ssss.chuangyunet.com/t1"]
    assert trends.finish_bins(session, "no-such-update", "servers", None) is None


def test_the_finish_time_histogram_stacks_ok_and_failed():
    spread = trends.FinishBins(start=T0, span_seconds=200.0, bins=[(0, 0), (2, 1)] + [(0, 0)] * 17 + [(1, 0)],
                               slowest=[])
    chart = charts.finish_times(spread, "IPs")
    assert chart is not None and len(chart.bars) == 20 and chart.bars[0].rects == []
    second = chart.bars[1]
    assert [r.kind for r in second.rects] == ["ok", "failed"]
    assert second.rects[0].height == pytest.approx(2 * second.rects[1].height)
    assert second.title == "10 s – 20 s: 2 ok, 1 failed"
    assert chart.summary == "4 IPs reported over 3 min 20 s after the start: 3 ok, 1 failed."
    assert charts.finish_times(None, "IPs") is None


def test_the_per_day_chart_scales_its_bars_to_a_round_top():
    days = [trends.DayOutcomes(date(2026, 1, d), {"succeeded": d, "failed": 1, "stopped": 0, "running": 0})
            for d in range(1, 4)]
    chart = charts.updates_per_day(days)
    assert chart is not None and "from 2026-01-01 to 2026-01-03: 6 succeeded, 3 failed" in chart.summary
    tallest = sum(r.height for r in chart.bars[-1].rects)  # 4 of a top of 5
    shortest = sum(r.height for r in chart.bars[0].rects)  # 2 of 5
    assert tallest == pytest.approx(2 * shortest) and chart.bars[-1].title == "2026-01-03: 3 succeeded, 1 failed"
    assert charts.updates_per_day([]) is None


@pytest.mark.parametrize(("seconds", "said"), [(None, "—"), (0, "0 s"), (59.6, "1 min"), (130, "2 min 10 s"),
                                               (3600, "1 h"), (3900, "1 h 5 min"), (90000, "1 d 1 h")])
def test_durations_read_as_an_operator_says_them(seconds, said):
    assert charts.duration(seconds) == said


def test_chinese_runs_are_marked_and_everything_is_escaped():
    assert str(mark_chinese("更新失败,不执行erl命令")) == (
        '<span lang="zh">更新失败,不执行</span>erl<span lang="zh">命令</span>')
    assert str(mark_chinese("<b>大陆</b>")) == '&lt;b&gt;<span lang="zh">大陆</span>&lt;/b&gt;'
    assert str(mark_chinese(None)) == "" and str(mark_chinese("plain")) == "plain"
    assert str(lang_attribute("大陆")) == ' lang="zh"' and str(lang_attribute("cn")) == ""


async def test_the_list_shows_per_type_progress_and_no_zero_of_zero(client):
    page = (await client.get("/")).text
    row = page[page.index(f'data-update="{CLIENT_RUNNING}"'):]
    row = row[:row.index("</tr>")]
    assert 'role="progressbar"' in row and 'aria-valuenow="1"' in row and 'aria-valuemax="2"' in row
    assert 'data-field="cdn_dirs"' in row and 'data-field="servers"' not in row and "of 0" not in row
    assert 'id="chart-per-day"' in page and 'aria-labelledby="chart-per-day-summary"' in page
    assert page.index(f'data-update="{CLIENT_RUNNING}"') < page.index(f'data-update="{SERVER_DONE}"')


async def test_an_update_page_says_a_failed_step_in_words_and_marks_chinese(client):
    page = (await client.get(f"/updates/{SERVER_DONE}")).text
    step = page[page.index('data-stage="completed"'):]
    step = step[:step.index("</li>")]
    assert "✕" in step and '<strong class="step-failed">failed</strong>' in step
    assert '(<span lang="zh">大陆</span>)' in page and '<span lang="zh">更新失败,不执行</span>erl' in page
    assert 'id="chart-finish"' in page and "IPs by finish time" in page
    assert all("aria-label=" in nav for nav in re.findall(r"<nav[^>]*>", page))  # landmarks told apart


async def test_the_rejected_page_links_only_to_updates_that_exist(client):
    page = (await client.get("/rejected")).text
    assert f'href="/updates/{GONE}"' not in page and "not in the projection" in page
    assert f'href="/updates/{SERVER_DONE}"' in page
    items = {r["updateid"]: r["update_known"] for r in (await client.get("/api/rejected")).json()["items"]}
    assert items == {GONE: False, SERVER_DONE: True}


async def test_the_json_api_only_gains_fields(client):
    summary = (await client.get("/api/updates")).json()["items"][0]
    before = {"updateid", "project", "area", "update_type", "version", "stage", "status", "requested_by",
              "final_result", "final_data", "first_event_at", "last_event_at", "completed_at", "event_count",
              "servers", "ips", "cdn_dirs", "rsync_targets", "files_count"}
    assert before <= set(summary)
    assert {"running", "started_at", "finished_at", "duration_seconds", "progress"} <= set(summary)


async def test_the_favicon_is_an_icon_served_without_sign_in(database_url):
    app = create_app(database_url, access=dashboard_access())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://dash") as anonymous:
        icon = await anonymous.get("/favicon.ico")
        assert icon.status_code == 200 and icon.headers["content-type"] == "image/x-icon"
        assert icon.content[:4] == b"\x00\x00\x01\x00"  # an ICO directory
        assert (await anonymous.get("/")).status_code == 401  # the pages still are not
    app.state.engine.dispose()
