"""``hotupdate replay``: the view rebuilt from the log equals the live projection's, field for field.

Also up to a position or a time (the view as it was then), on SQLite and PostgreSQL (as source
and as target), and ``replay --publish`` through the real broker: the events arrive marked as
replayed, with their original bytes and ids; a live consumer ignores them, one that opted in
handles them.
"""

from __future__ import annotations

import asyncio
import io

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

from bus.consumer import ConsumerService
from bus.contract.events import CATALOGUE
from bus.contract.registry import DEFAULT_REGISTRY
from bus.handling import Incoming
from bus.publisher import REPLAYED_HEADER, AsyncPublisher
from bus.topology import ServiceQueue
from cli.audit_cmd import ProgressBar
from cli.main import main
from projections import log as event_log
from projections.ingest import ingest_batch
from projections.log.republish import LOG_POSITION_HEADER
from projections.models import UpdateRow
from projections.rebuild import RebuildError, SourceLogBroken, TargetNotEmpty, rebuild
from tests.audit_support import history, ingest_history, log_of, received, view_of
from tests.busprobe import Probe
from tests.projection_support import hot_server_flow, item, migrated_engine


def _url(kind: str, request: pytest.FixtureRequest, tmp_path, name: str) -> str:
    if kind == "postgres":
        return str(request.getfixturevalue("postgres_url"))
    return f"sqlite:///{tmp_path / name}"


@pytest.fixture(scope="module")
def batches():
    return history()


@pytest.mark.parametrize("reader", [False, True], ids=["one process", "reader process"])
@pytest.mark.parametrize(
    ("source_kind", "target_kind"),
    [
        ("sqlite", "sqlite"),
        pytest.param("postgres", "sqlite", marks=pytest.mark.postgres),
        pytest.param("sqlite", "postgres", marks=pytest.mark.postgres),
    ],
)
def test_a_replay_equals_the_live_projection_field_for_field(request, tmp_path, batches, source_kind, target_kind,
                                                            reader):
    """With a reader process, SQLite to SQLite the log rows are copied by SQL; else they travel with the windows."""
    source_url = _url(source_kind, request, tmp_path, "live.db")
    target_url = _url(target_kind, request, tmp_path, "replayed.db")
    live = migrated_engine(source_url)
    ingest_history(live, batches)

    result = rebuild(source_url, target_url, window=7, reader=reader)

    target = migrated_engine(target_url)
    live_log = log_of(live)
    assert result.events == len(live_log["log"]) == result.last_position
    assert [u.type for u in result.unapplied] == ["hotupdate.ip.finished.v1"]  # the IP too long for the view
    assert result.applied == result.events - 1
    assert view_of(target) == view_of(live)
    assert log_of(target) == live_log  # the log copied verbatim: same positions, times, hashes, applied events
    with Session(target) as s:
        assert event_log.verify(s).ok
    live.dispose()
    target.dispose()


def test_the_same_log_replayed_twice_and_in_other_batch_sizes_gives_the_same_view(tmp_path, batches):
    source_url = f"sqlite:///{tmp_path / 'live.db'}"
    ingest_history(migrated_engine(source_url), batches)
    views = []
    for n, size in enumerate((1, 50, 500)):
        target = f"sqlite:///{tmp_path / f'replay{n}.db'}"
        rebuild(source_url, target, window=size)
        views.append((view_of(migrated_engine(target)), log_of(migrated_engine(target))))
    assert views[0] == views[1] == views[2]


def test_a_replay_until_a_time_shows_the_view_the_dashboard_showed_then(tmp_path, batches):
    source_url = f"sqlite:///{tmp_path / 'live.db'}"
    ingest_history(migrated_engine(source_url), batches)
    cut = len(batches) // 2
    then = migrated_engine(f"sqlite:///{tmp_path / 'then.db'}")  # the live projection as it was at that minute
    ingest_history(then, batches[:cut])

    target_url = f"sqlite:///{tmp_path / 'replayed.db'}"
    result = rebuild(source_url, target_url, until_time=received(cut - 1))  # batch cut-1's received time, inclusive

    target = migrated_engine(target_url)
    assert view_of(target) == view_of(then)
    assert log_of(target) == log_of(then)
    assert result.last_position == log_of(then)["head"][0] < log_of(migrated_engine(source_url))["head"][0]


def test_a_replay_until_a_position_equals_a_projection_that_took_only_that_prefix(tmp_path, batches):
    source_url = f"sqlite:///{tmp_path / 'live.db'}"
    live = migrated_engine(source_url)
    ingest_history(live, batches)
    logged = log_of(live)["log"]
    until = len(logged) - 9  # in the middle of a batch
    prefix = migrated_engine(f"sqlite:///{tmp_path / 'prefix.db'}")
    ingest_batch(prefix, [item(_envelope(row["envelope"])) for row in logged[:until]])

    target_url = f"sqlite:///{tmp_path / 'replayed.db'}"
    result = rebuild(source_url, target_url, until_position=until)

    assert result.last_position == result.events == until
    assert view_of(migrated_engine(target_url)) == view_of(prefix)


@pytest.mark.parametrize("window", [1, 7, 13, 40])
def test_a_replay_in_small_windows_equals_the_live_projection(tmp_path, batches, window):
    """Windows end in the middle of updates (the next window reads them back and updates them) and
    next to the event the view cannot take (left out, the events around it applied)."""
    source_url = f"sqlite:///{tmp_path / 'live.db'}"
    live = migrated_engine(source_url)
    ingest_history(live, batches)
    target_url = f"sqlite:///{tmp_path / 'replayed.db'}"

    result = rebuild(source_url, target_url, window=window)

    target = migrated_engine(target_url)
    assert [u.type for u in result.unapplied] == ["hotupdate.ip.finished.v1"]
    assert result.applied == result.events - 1 == log_of(live)["head"][0] - 1
    assert view_of(target) == view_of(live)
    assert log_of(target) == log_of(live)
    with Session(target) as s:
        assert event_log.verify(s).ok


def test_a_logged_event_the_catalogue_no_longer_knows_is_copied_and_left_unapplied(tmp_path, batches):
    source_url = f"sqlite:///{tmp_path / 'live.db'}"
    live = migrated_engine(source_url)
    ingest_history(live, batches)
    known = _envelope(log_of(live)["log"][0]["envelope"])
    retired = known.model_copy(update={"id": "retired-event", "type": "hotupdate.retired.thing.v1", "data": {}})
    with Session(live) as s, s.begin():
        head = event_log.lock_head(s)
        head.advance(event_log.append(s, head, retired, received(len(batches))))
        head.version += 1
        event_log.store_head(s, head)
    target_url = f"sqlite:///{tmp_path / 'replayed.db'}"

    result = rebuild(source_url, target_url)

    target = migrated_engine(target_url)
    assert [(u.event_id, u.reason.split(":")[0]) for u in result.unapplied][-1] == ("retired-event",
                                                                                   "cannot be decoded")
    assert log_of(target) == log_of(live)  # logged, not applied: as the live projection left it
    assert view_of(target) == view_of(live)


def _envelope(stored: str):
    from bus.contract.envelope import Envelope

    return Envelope.from_bytes(stored.encode())


def test_a_target_with_data_is_refused_unless_forced(tmp_path, batches):
    source_url = f"sqlite:///{tmp_path / 'live.db'}"
    live = migrated_engine(source_url)
    ingest_history(live, batches)
    target_url = f"sqlite:///{tmp_path / 'replayed.db'}"
    rebuild(source_url, target_url, until_position=5)
    with pytest.raises(TargetNotEmpty, match="projection_event_log"):
        rebuild(source_url, target_url)
    rebuild(source_url, target_url, force=True)
    assert view_of(migrated_engine(target_url)) == view_of(live)
    with pytest.raises(RebuildError, match="is the source"):
        rebuild(source_url, source_url.replace("live.db", "./live.db"), force=True)


def test_a_tampered_source_stops_the_replay_at_the_broken_position(tmp_path, batches):
    source_url = f"sqlite:///{tmp_path / 'live.db'}"
    live = migrated_engine(source_url)
    ingest_history(live, batches)
    with live.begin() as conn:
        stored = conn.execute(text("select envelope from projection_event_log where position = 12")).scalar_one()
        conn.execute(text("update projection_event_log set envelope = :e where position = 12"),
                     {"e": stored.replace('"source":"', '"source":"forged/', 1)})
    target_url = f"sqlite:///{tmp_path / 'replayed.db'}"
    with pytest.raises(SourceLogBroken) as broken:
        rebuild(source_url, target_url, window=5)
    assert broken.value.position == 12 and broken.value.replayed == 11
    assert log_of(migrated_engine(target_url))["head"][0] == 11  # what verified is kept, and verifies


def test_the_cli_replays_with_a_progress_bar_and_refuses_a_used_target(tmp_path, batches, capsys):
    source_url = f"sqlite:///{tmp_path / 'live.db'}"
    live = migrated_engine(source_url)
    ingest_history(live, batches)
    target_url = f"sqlite:///{tmp_path / 'replayed.db'}"
    total = log_of(live)["head"][0]

    assert main(["replay", "--database-url", source_url, "--into", target_url, "--progress",
                 "--batch-size", "10"]) == 0
    out, err = capsys.readouterr()
    assert f"replayed {total} events (up to position {total})" in out and "1 not applied" in out
    assert f"] {total}/{total} events " in err and err.count("\r[") >= 2 and err.endswith("/s\n")
    assert view_of(migrated_engine(target_url)) == view_of(live)

    assert main(["replay", "--database-url", source_url, "--into", target_url]) == 2
    assert "pass --force" in capsys.readouterr().err
    assert main(["replay", "--database-url", source_url, "--into", target_url, "--force",
                 "--until-time", received(0).replace(tzinfo=None).isoformat()]) == 0
    with Session(migrated_engine(target_url)) as s:
        assert s.query(UpdateRow).count() >= 1
    assert "replayed" in capsys.readouterr().out


def test_the_progress_bar_draws_done_total_and_rate_in_place():
    stream, now = io.StringIO(), [100.0]
    bar = ProgressBar(stream, width=10, clock=lambda: now[0])
    bar(0, 100_000)
    now[0] = 101.5
    bar(12_000, 100_000)
    now[0] = 101.52  # too soon to redraw
    bar(12_001, 100_000)
    now[0] = 112.5
    bar(100_000, 100_000)  # the last step is always drawn
    bar.close()
    assert stream.getvalue().split("\r") == [
        "",
        "[..........] 0/100000 events 0/s",
        "[#.........] 12000/100000 events 8,000/s",
        "[##########] 100000/100000 events 8,000/s\n",
    ]


# --- replay --publish -------------------------------------------------------------------------------


class _Seen:
    def __init__(self) -> None:
        self.items: list[tuple[str, bool]] = []

    async def __call__(self, msg: Incoming, emit) -> None:
        self.items.append((msg.envelope.id, msg.replayed))


def _consumer(amqp_url: str, name: str, seen: _Seen, accept_replayed: bool) -> ConsumerService:
    return ConsumerService(
        amqp_url=amqp_url, queue=ServiceQueue(service=name, bindings=("#",)), source=f"tests/{name}", prefetch=1,
        handlers={DEFAULT_REGISTRY.latest(m.event_name): seen for m in CATALOGUE}, accept_replayed=accept_replayed,
    )


async def _until(check, timeout: float = 20.0) -> None:
    async def poll() -> None:
        while not check():
            await asyncio.sleep(0.05)

    await asyncio.wait_for(poll(), timeout)


@pytest.mark.rabbit
async def test_replay_publish_sends_the_slice_marked_replayed_and_only_opted_in_consumers_handle_it(
    tmp_path, amqp_url, batches
):
    source_url = f"sqlite:///{tmp_path / 'live.db'}"
    live = migrated_engine(source_url)
    ingest_history(live, batches)
    updateid = "9f0e8d7c-0000-4000-8000-00000000beef"
    logged = [row for row in log_of(live)["log"] if row["updateid"] == updateid]
    assert len(logged) == len(hot_server_flow())

    live_seen, catching_up_seen = _Seen(), _Seen()
    live_consumer = _consumer(amqp_url, "live", live_seen, accept_replayed=False)
    catching_up = _consumer(amqp_url, "catching_up", catching_up_seen, accept_replayed=True)
    await live_consumer.start()
    await catching_up.start()
    try:
        async with Probe(amqp_url) as probe:
            await probe.bind("#")
            code = await asyncio.to_thread(main, [
                "replay", "--publish", "--database-url", source_url, "--amqp-url", amqp_url, "--update-id", updateid,
            ])
            assert code == 0
            messages = await probe.wait_for(len(logged))
            # Then one live (not replayed) event: the live consumer handles it after ignoring the replay.
            marker = hot_server_flow(updateid="marker-update")[0][0]
            async with AsyncPublisher(amqp_url) as pub:
                await pub.publish(marker)
            await _until(lambda: (marker.id, False) in live_seen.items
                         and (marker.id, False) in catching_up_seen.items)
    finally:
        await live_consumer.stop()
        await catching_up.stop()

    assert [m.body.decode() for m in messages] == [row["envelope"] for row in logged]  # the logged bytes
    assert [m.message_id for m in messages] == [row["event_id"] for row in logged]
    assert all(m.headers[REPLAYED_HEADER] is True for m in messages)
    assert [m.headers[LOG_POSITION_HEADER] for m in messages] == [row["position"] for row in logged]
    assert [m.routing_key for m in messages] == [_envelope(row["envelope"]).routing_key for row in logged]
    assert live_seen.items == [(marker.id, False)]
    assert catching_up_seen.items == [(row["event_id"], True) for row in logged] + [(marker.id, False)]
