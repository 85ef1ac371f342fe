"""Replay benchmark: rebuild the status view of a log of N events (default 1,000,000) in a fresh SQLite view.

The source log is generated fast: the stream of :mod:`bench.projection_events` (hot_server
updates of 20 IPs × 5 servers, every 5th a hot_client update), its rows (hash chain computed
here, as the appender does) written with multi-row INSERTs into a migrated SQLite file, then
verified. The subject is :func:`projections.rebuild.rebuild` into a fresh SQLite file (a reader
process reads the log, walks its hash chain, decodes and folds each event into the view in memory and
derives each update's rows once per window of :data:`projections.rebuild.WINDOW` events; the main
process copies the log rows and writes the view rows). The floor is reading the same log rows alone,
in the same chunks, and parsing their JSON.
For a comparison with another commit, run :mod:`bench.paired`.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from bench.projection_events import Stamper, hot_client_template, hot_server_template
from bench.report import Section, write
from bus.contract.envelope import Envelope
from domain.db import make_engine, upgrade
from projections import log as event_log
from projections.models import GENESIS_HASH, LoggedEvent, LogHead, UpdateRow
from projections.rebuild import WINDOW, rebuild

RECEIVED = datetime(2026, 11, 24, 8, 0, 0, tzinfo=UTC)


class _Template:
    """A template update's log columns, with the UUID-bearing ones filled per copy."""

    def __init__(self, envelopes: list[Envelope]) -> None:
        self.stamper = Stamper(envelopes)
        self.meta: list[dict[str, Any]] = [
            {"id": e.id.encode(), "type": e.type, "updateid": e.updateid.encode(), "project": e.project,
             "area": e.area, "source": e.source, "sequence": e.sequence, "event_time": e.time.astimezone(UTC)}
            for e in envelopes
        ]


def generate(url: str, events: int, chunk: int = 20_000) -> tuple[int, int]:
    """Write a log of at least ``events`` events (whole updates) at ``url``; (events, updates) written."""
    upgrade(url, "projection")
    engine = make_engine(url)
    server = _Template(hot_server_template(20, 5))
    client = _Template(hot_client_template())
    position, prev = 0, GENESIS_HASH
    rows: list[dict[str, Any]] = []
    n = 0
    with engine.begin() as conn:
        conn.execute(update(LogHead).values(version=LogHead.version))  # the head row exists after migrating
        while position < events:
            group = []
            for k in range(n, n + 20):  # 20 updates interleaved, as in the live stream
                template = client if k % 5 == 4 else server
                fresh = template.stamper.fresh(k)
                group.append((template, fresh, template.stamper.copy(k, fresh)))
            n += 20
            for j in range(max(len(g[2]) for g in group)):
                for template, fresh, bodies in group:
                    if j >= len(bodies):
                        continue
                    meta = template.meta[j]
                    position += 1
                    h = event_log.chain_hash(prev, bodies[j])
                    rows.append({
                        **meta, "position": position, "event_id": fresh[meta["id"]].decode(),
                        "updateid": fresh[meta["updateid"]].decode(),
                        "received_at": RECEIVED + timedelta(milliseconds=position),
                        "envelope": bodies[j].decode("utf-8"), "prev_hash": prev, "hash": h,
                    })
                    rows[-1].pop("id")
                    prev = h
            if len(rows) >= chunk:
                conn.execute(insert(LoggedEvent), rows)
                rows = []
        if rows:
            conn.execute(insert(LoggedEvent), rows)
        conn.execute(update(LogHead).values(position=position, hash=prev))
    engine.dispose()
    return position, n


def read_floor(url: str, batch: int) -> float:
    """Events/s of reading the log in replay's chunks and parsing each envelope's JSON."""
    engine = make_engine(url)
    table = LoggedEvent.__table__
    t0 = time.perf_counter()
    count, last = 0, 0
    with Session(engine) as session:
        while True:
            rows = session.execute(
                select(table).where(table.c.position > last).order_by(table.c.position).limit(batch)
            ).mappings().all()
            if not rows:
                break
            for row in rows:
                json.loads(row["envelope"])
            count += len(rows)
            last = rows[-1]["position"]
    elapsed = time.perf_counter() - t0
    engine.dispose()
    return count / elapsed


def peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main(events: int, batch: int, directory: str | None) -> Section:
    with tempfile.TemporaryDirectory(prefix="bench-replay-", dir=directory) as tmp:
        source, target = f"sqlite:///{Path(tmp) / 'source.db'}", f"sqlite:///{Path(tmp) / 'target.db'}"
        t0 = time.perf_counter()
        n, updates = generate(source, events)
        generated = time.perf_counter() - t0
        with Session(make_engine(source)) as s:
            t0 = time.perf_counter()
            verified = event_log.verify(s)
            verify_s = time.perf_counter() - t0
        if not verified.ok or verified.count != n:
            raise RuntimeError(f"the generated log does not verify: {verified.describe()}")
        floor = read_floor(source, batch)
        cpu0, t0 = time.process_time(), time.perf_counter()
        result = rebuild(source, target, window=WINDOW)
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        rate = result.events / elapsed
        target_engine = make_engine(target)
        with Session(target_engine) as s:
            n_updates = s.execute(select(UpdateRow.updateid)).all()
        target_engine.dispose()
        if result.events != n or result.applied != n or len(n_updates) != updates:
            raise RuntimeError(f"the replay is incomplete: {result.events}/{n} events, {len(n_updates)} updates")
        size = os.path.getsize(Path(tmp) / "source.db") / 2**20
    return Section(
        name="replay",
        title="4. Replay of 1,000,000 events",
        goal="≥ 20,000 events/s into a fresh SQLite view",
        table=[
            ["measure", "floor (read the log rows + JSON parse)", "hotupdate (replay)", "ratio to floor",
             "goal met"],
            [f"{n:,} events of {updates:,} updates, batches of {batch:,}", f"{floor:,.0f} ev/s",
             f"{rate:,.0f} ev/s ({elapsed:,.1f} s)", f"{rate / floor:.3f}", "yes" if rate >= 20_000 else "no"],
            ["CPU per event: main process (writes)", "", f"{cpu * 1e6 / n:,.0f} µs", "", ""],
            ["peak RSS: main process, reader process", "",
             f"{peak_rss_mib():,.0f} MiB, {result.reader_peak_rss_kib / 1024:,.0f} MiB", "", ""],
        ],
        notes=[
            f"source log generated in {generated:,.1f} s ({size:,.0f} MiB SQLite file, hash chain computed as the "
            f"appender does) and verified in {verify_s:,.1f} s before the rebuild",
            "event mix: hot_server updates (pull, pulled, push, pushed, request of 20 IPs × 5 servers, started, "
            "20 × IP finished, completed) and every 5th a hot_client update (4 CDN dirs); 20 updates interleaved",
            "two processes: a reader process reads the log in chunks of 2,000 rows, walks its chain, decodes "
            "and validates each event as the live consumer did and folds it with the live projection's fold "
            f"on rows in memory, and hands each window of {WINDOW:,} events to the main process as plain "
            "tuples; the main process writes it in one transaction: the log rows copied verbatim from the "
            "attached source by SQL, the new view rows inserted and the changed ones updated (executemany of "
            "tuples). The rows of the updates still in progress are kept for the next window; the rest are "
            "let go (read back if touched again), so memory is bounded by the window, not the log. Paired "
            "runs against the commit before the rebuild package: BENCHMARKS.md, 'Paired: rebuild and ingest'",
        ],
    )


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=2000)
    parser.add_argument("--dir", default=None, help="where the SQLite files go (default: the system's temp dir)")
    args = parser.parse_args()
    write(main(args.events, args.batch, args.dir))


if __name__ == "__main__":
    cli()
