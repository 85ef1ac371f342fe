"""The broker's stream copy of the events (bus.history): read from the first, an offset, a time, by AMQP."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aio_pika
import pytest

from bus.contract.examples import EXAMPLES
from bus.contract.registry import make_envelope
from bus.history import declare_history, ensure_history, read_history
from bus.publisher import AsyncPublisher
from bus.topology import Topology
from cli.history_cmd import parse_start

pytestmark = [pytest.mark.rabbit]

ROOT = Path(__file__).resolve().parents[2]


async def _publish_examples(url: str, n: int) -> list[str]:
    ids = []
    async with AsyncPublisher(url) as pub:
        for i, event in enumerate(EXAMPLES[:n]):
            env = make_envelope(event, source="tests", updateid=f"h-{i}", project="ssss", area="cn")
            await pub.publish(env)
            ids.append(env.id)
    return ids


async def _read(url: str, **kwargs: object) -> list[tuple[int, str | None]]:
    return [(e.offset, e.envelope.id if e.envelope else None)
            async for e in read_history(url, Topology(), idle_seconds=1.0, **kwargs)]  # type: ignore[arg-type]


async def test_every_published_event_is_kept_in_order_and_read_from_first_an_offset_or_a_limit(amqp_url):
    await ensure_history(amqp_url, Topology())
    ids = await _publish_examples(amqp_url, 5)

    assert await _read(amqp_url, start="first") == list(enumerate(ids))
    assert await _read(amqp_url, start=3) == [(3, ids[3]), (4, ids[4])]
    assert await _read(amqp_url, start="first", limit=2) == [(0, ids[0]), (1, ids[1])]
    assert await _read(amqp_url, start="first") == list(enumerate(ids))  # reading took nothing away


async def test_reading_from_a_time_starts_at_what_arrived_then(amqp_url):
    await ensure_history(amqp_url, Topology())
    ids = await _publish_examples(amqp_url, 3)
    assert [i for _, i in await _read(amqp_url, start=datetime.now(UTC) - timedelta(hours=1))] == ids
    assert await _read(amqp_url, start=datetime.now(UTC) + timedelta(hours=1)) == []


async def test_a_body_that_is_not_an_envelope_is_kept_and_read_as_bytes(amqp_url):
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        await declare_history(channel, Topology())
        exchange = await channel.get_exchange(Topology().events_exchange)
        await exchange.publish(aio_pika.Message(b"\xff not json"), routing_key="ssss.cn.whatever.v1")
    finally:
        await connection.close()
    entries = [e async for e in read_history(amqp_url, Topology(), idle_seconds=1.0)]
    assert [(e.offset, e.envelope, e.body) for e in entries] == [(0, None, b"\xff not json")]


async def test_declaring_the_stream_again_is_harmless(amqp_url):
    await ensure_history(amqp_url, Topology())
    await ensure_history(amqp_url, Topology())  # every `projection run --history-stream` declares it
    ids = await _publish_examples(amqp_url, 1)
    assert await _read(amqp_url) == [(0, ids[0])]


def test_history_read_cli_prints_one_json_object_per_event(amqp_url):
    import asyncio

    asyncio.run(ensure_history(amqp_url, Topology()))
    ids = asyncio.run(_publish_examples(amqp_url, 4))
    done = subprocess.run([sys.executable, "-m", "cli.main", "history", "read", "--amqp-url", amqp_url, "--from", "1",
                           "--idle-seconds", "1"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(line["offset"], line["envelope"]["id"]) for line in lines] == list(enumerate(ids))[1:]
    assert done.stderr.strip().endswith("3 events")


@pytest.mark.parametrize(("text", "start"), [
    ("first", "first"), ("next", "next"), ("12", 12), ("2h", "2h"), ("7D", "7D"),
    ("2026-11-24T08:00:00+08:00", datetime(2026, 11, 24, tzinfo=UTC)),
    ("2026-11-24T00:00:00", datetime(2026, 11, 24, tzinfo=UTC)),
])
def test_from_takes_the_streams_forms_and_a_time_without_zone_is_utc(text, start):
    assert parse_start(text) == start


def test_from_names_the_forms_it_takes_when_it_cannot_read_one():
    with pytest.raises(ValueError, match="not first, last, next, an offset"):
        parse_start("yesterday")
