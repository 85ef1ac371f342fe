"""The detail's pages of servers and IPs: read from the failed-first indexes, in exactly the order of
a full sort, on SQLite and PostgreSQL; the JSON detail's default page sizes and totals; and the
update page's pages of servers and IPs, linked one to the next."""

from __future__ import annotations

import html
import json
import re

import httpx
import pytest
from sqlalchemy import event, insert, select
from sqlalchemy.orm import Session

from bus.contract.events import UpdateCompleted, UpdateRequested, UpdateStarted
from bus.contract.registry import make_envelope
from bus.handling import child_envelope
from projections import detail, queries
from projections.dashboard import create_app
from projections.dashboard.app import PAGE_SIZES
from projections.ingest import ingest_batch
from projections.models import LoggedEvent, ServerRow
from projections.schemas import UpdateFilters
from tests.projection_support import DASHBOARD_AUTH, FILES, at, dashboard_access, ip_finished, item, migrated_engine

UPDATEID = "d7a1c0de-0000-4000-8000-000000000042"
# Names whose code-point order differs from a locale's ("10.0.0.10" < "10.0.0.9", "B" < "Z" < "a").
SERVER_NAMES = ("a_1", "Z_1", "B-2")
IPS = 60
REPORTED, SILENT = range(40), range(40, 45)  # the rest never ran (the update was aborted)


def _ip(n: int) -> str:
    return f"10.0.{n // 20}.{n % 20 + 1}"


def _mixed_update() -> list:
    """An aborted hot_server update of 60 IPs × 3 servers: failed, ok, silent and never-run servers."""
    hosts = {_ip(n): list(SERVER_NAMES) for n in range(IPS)}
    request = at(make_envelope(
        UpdateRequested(update_type="hot_server", version="004200000", ops_manager="ops1", update_file_list=FILES,
                        requested_by="bob", update_server_list={"game": hosts}),
        source="hotupdate/cmdb", updateid=UPDATEID, project="ssss", area="cn", sequence=5), 0)
    started = at(child_envelope(request, UpdateStarted(update_type="hot_server", version="004200000",
                                                       ops_manager="ops1", ips=list(hosts)),
                                source="hotupdate/ops_executor/ops1", offset=1), 1)
    envs = [request, started]
    for n in REPORTED:
        results = {s: (n * 3 + k) % 7 != 0 for k, s in enumerate(SERVER_NAMES)}  # every 7th server failed
        envs.append(ip_finished(request, _ip(n), "game", results, offset=2 + n, minutes=2 + n))
    not_run = [_ip(n) for n in range(IPS) if n not in REPORTED and n not in SILENT]
    envs.append(at(child_envelope(request, UpdateCompleted(
        update_type="hot_server", version="004200000", final_result=False, final_data="aborted",
        outcome="aborted", not_run=not_run, ok_count=0, failed_count=0,
    ), source="hotupdate/ops_executor/ops1", offset=100), 100))
    return [item(e) for e in envs]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def engine(request, tmp_path):
    url = f"sqlite:///{tmp_path / 'projection.db'}" if request.param == "sqlite" else request.getfixturevalue(
        "postgres_url")
    eng = migrated_engine(url)
    outcomes = ingest_batch(eng, _mixed_update())
    assert all(o.status == "appended" for o in outcomes)
    yield eng
    eng.dispose()


def _servers(d) -> list[tuple]:
    return [(s.ip, s.server, s.reported, s.ok, s.not_run) for s in d.server_list]


def _ips(d) -> list[tuple]:
    return [(i.ip, i.reported, i.ok, i.not_run) for i in d.ip_list]


def _paged(engine, size: int, field: str) -> list[tuple]:
    rows: list[tuple] = []
    with Session(engine) as s:
        while True:
            if field == "servers":
                d = detail.update_detail(s, UPDATEID, servers_offset=len(rows), servers_limit=size)
                page, total = _servers(d), d.servers_total
            else:
                d = detail.update_detail(s, UPDATEID, ips_offset=len(rows), ips_limit=size)
                page, total = _ips(d), d.ips_total
            assert len(page) == min(size, total - len(rows))
            rows += page
            if len(rows) >= total:
                return rows


def _rank(reported, ok, not_run) -> int:
    return 0 if reported and ok is False else 3 if reported else 2 if not_run else 1


def test_server_and_ip_pages_follow_the_full_failed_first_sort(engine):
    with Session(engine) as s:
        whole = detail.update_detail(s, UPDATEID)  # no limits: every row
    servers, ips = _servers(whole), _ips(whole)
    assert len(servers) == IPS * len(SERVER_NAMES) and len(ips) == IPS
    # the full sort, in Python (code-point order of IP and name)
    assert servers == sorted(servers, key=lambda r: (_rank(r[2], r[3], r[4]), r[0], r[1]))
    assert ips == sorted(ips, key=lambda r: (0 if r[2] is False else _rank(r[1], r[2], r[3]), r[0]))
    assert sorted({_rank(r, ok, nr) for _, _, r, ok, nr in servers}) == [0, 1, 2, 3]  # every rank is there
    assert [(ip, name) for ip, name, *_ in servers[:2]] == [("10.0.0.1", "a_1"), ("10.0.0.10", "Z_1")]
    for size in (1, 7, 100, 1000):
        assert _paged(engine, size, "servers") == servers
    for size in (1, 7, 50):
        assert _paged(engine, size, "ips") == ips


def test_rows_outside_the_views_usual_states_still_page_in_the_same_order(engine):
    # The view writes ``ok`` exactly for reported servers; rows that break that still sort by rank,
    # then IP and name (their rank holds two groups of the index, so the database sorts it).
    extra = [
        {"updateid": UPDATEID, "ip": "10.0.0.5", "server": "odd_reported", "reported": True, "ok": None},
        {"updateid": UPDATEID, "ip": "10.0.2.5", "server": "odd_silent", "reported": False, "ok": True},
        {"updateid": UPDATEID, "ip": "10.0.2.19", "server": "odd_never_ran", "reported": False, "ok": False},
    ]
    with engine.begin() as conn:
        conn.execute(insert(ServerRow), [{"expected": True, **row} for row in extra])
    with Session(engine) as s:
        servers = _servers(detail.update_detail(s, UPDATEID))
    assert {"odd_reported", "odd_silent", "odd_never_ran"} <= {name for _, name, *_ in servers}
    assert servers == sorted(servers, key=lambda r: (_rank(r[2], r[3], r[4]), r[0], r[1]))
    for size in (1, 13, 1000):
        assert _paged(engine, size, "servers") == servers


def _plans(engine, **limits) -> list[str]:
    """The query plans of the page queries ``update_detail`` runs on the servers and IPs tables."""
    statements: list[tuple[str, object]] = []

    def capture(_conn, _cursor, statement, parameters, _context, _many):
        if "ORDER BY" in statement and ("FROM projection_servers" in statement or "FROM projection_ips" in statement):
            statements.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", capture)
    try:
        with Session(engine) as s:
            detail.update_detail(s, UPDATEID, **limits)
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    assert statements
    plans = []
    with engine.connect() as conn:
        postgres = engine.dialect.name == "postgresql"
        if postgres:
            # A small table is cheaper to sort than to walk in index order; take that choice away
            # to see whether the index can give the order at all (it must: "C" collation on both).
            conn.exec_driver_sql("SET enable_seqscan = off")
            conn.exec_driver_sql("SET enable_sort = off")
        for statement, parameters in statements:
            explain = "EXPLAIN " if postgres else "EXPLAIN QUERY PLAN "
            rows = conn.exec_driver_sql(explain + statement, parameters).all()
            plans.append("\n".join(str(r[-1]) for r in rows))
    return plans


def test_the_failed_first_indexes_give_the_pages_order_without_a_sort(engine):
    plans = _plans(engine, servers_limit=100, ips_limit=50, events_limit=0)
    assert len(plans) >= 2
    for plan in plans:
        assert "failed_first" in plan, plan
        assert "Sort" not in plan and "TEMP B-TREE" not in plan, plan


async def test_the_json_detail_defaults_to_one_screen_of_each_list_with_the_totals(engine):
    app = create_app(engine.url.render_as_string(hide_password=False), access=dashboard_access())
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://dash",
                                     headers=DASHBOARD_AUTH) as client:
            d = (await client.get(f"/api/updates/{UPDATEID}")).json()
            schema = (await client.get("/openapi.json")).json()
    finally:
        app.state.engine.dispose()
    assert (len(d["server_list"]), d["servers_total"], d["servers_offset"]) == (100, IPS * 3, 0)
    assert (len(d["ip_list"]), d["ips_total"], d["ips_offset"]) == (50, IPS, 0)
    assert (len(d["events"]), d["events_total"]) == (20, len(REPORTED) + 3)
    documented = {p["name"]: p["schema"].get("default")
                  for p in schema["paths"]["/api/updates/{updateid}"]["get"]["parameters"]}
    assert documented == {"updateid": None, "events_limit": 20, "servers_offset": 0, "servers_limit": 100,
                          "ips_offset": 0, "ips_limit": 50}


def _pager(page: str, name: str) -> str:
    found = re.search(rf'<nav class="paging" data-pager="{name}"[^>]*>(.*?)</nav>', page, re.S)
    assert found, f"no {name} pager"
    return found.group(1)


async def test_the_update_page_shows_a_page_of_servers_and_ips_and_links_to_the_next(engine, monkeypatch):
    monkeypatch.setitem(PAGE_SIZES, "servers", 50)
    monkeypatch.setitem(PAGE_SIZES, "ips", 25)
    with Session(engine) as s:
        whole = detail.update_detail(s, UPDATEID)
    app = create_app(engine.url.render_as_string(hide_password=False), access=dashboard_access())
    servers: list[tuple[str, str]] = []
    ips: list[str] = []
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://dash",
                                     headers=DASHBOARD_AUTH) as client:
            for name, found in (("servers", servers), ("ips", ips)):
                url: str | None = f"/updates/{UPDATEID}"
                while url:
                    page = (await client.get(url)).text
                    if name == "servers":
                        found += re.findall(r'<tr class="[^"]*" data-server="([^"]+)" data-ip="([^"]+)"', page)
                    else:
                        found += re.findall(r'<tr class="[^"]*" data-ip="([^"]+)">', page)
                    pager = _pager(page, name)
                    after = re.search(r'href="([^"]+)" rel="next"', pager)
                    url = f"/updates/{UPDATEID}{html.unescape(after.group(1))}" if after else None
                    if url is None:  # the last page: it says where it is and links back
                        shown = "151–180 of 180" if name == "servers" else "51–60 of 60"
                        assert shown in pager and 'rel="prev"' in pager
    finally:
        app.state.engine.dispose()
    assert servers == [(s.server, s.ip) for s in whole.server_list]
    assert ips == [i.ip for i in whole.ip_list]


async def test_the_json_detail_is_the_detail_model_with_the_stored_envelopes_as_they_were_logged(engine):
    app = create_app(engine.url.render_as_string(hide_password=False), access=dashboard_access())
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://dash",
                                     headers=DASHBOARD_AUTH) as client:
            response = await client.get(f"/api/updates/{UPDATEID}", params={"events_limit": 30})
    finally:
        app.state.engine.dispose()
    with Session(engine) as s:
        expected = detail.update_detail(s, UPDATEID, events_limit=30, servers_limit=100, ips_limit=50)
        stored = s.execute(select(LoggedEvent.envelope).where(LoggedEvent.updateid == UPDATEID)
                           .order_by(LoggedEvent.position).limit(30)).scalars().all()
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body == expected.model_dump(mode="json")
    assert [e["envelope"] for e in body["events"]] == [json.loads(text) for text in stored]
    assert body["events"][0]["envelope"]["data"]["update_server_list"]["game"]["10.0.0.1"] == list(SERVER_NAMES)


def test_the_list_filtered_by_status_reads_the_status_and_time_index(engine):
    # Without it the database looked up every update of the status in the table, then sorted them.
    statements: list[tuple[str, object]] = []

    def capture(_conn, _cursor, statement, parameters, _context, _many):
        if "FROM projection_updates" in statement:
            statements.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", capture)
    try:
        with Session(engine) as s:
            page = queries.list_updates(s, UpdateFilters(status="failed"))
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    assert page.total >= 0 and len(statements) == 2  # the count, then the page
    postgres = engine.dialect.name == "postgresql"
    with engine.connect() as conn:
        if postgres:  # a small table is cheaper to scan: take that choice away, as above
            conn.exec_driver_sql("SET enable_seqscan = off")
            conn.exec_driver_sql("SET enable_sort = off")
        for statement, parameters in statements:
            explain = "EXPLAIN " if postgres else "EXPLAIN QUERY PLAN "
            plan = "\n".join(str(r[-1]) for r in conn.exec_driver_sql(explain + statement, parameters))
            assert "ix_projection_updates_status_last_event_at" in plan, plan
