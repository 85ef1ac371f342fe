"""Replay benchmark: rebuild the status view of a log of N events (default 1,000,000) in a fresh SQLite view.

The source log is generated fast: the stream of :mod:`bench.projection_events` (hot_server
updates of 20 IPs × 5 servers, every 5th a hot_client update), its rows (hash chain computed
here, as the appender does) written with multi-row INSERTs into a migrated SQLite file, then
verified. The subject is :func:`projections.replay.replay` into a fresh SQLite file (a reader
process reads, checks and decodes the log; the main process copies each row, folds it into the view
in memory, derives and writes each update's rows once per window of
:data:`projections.replay.WINDOW` events). The
floor is reading the same log rows alone, in the same chunks, and parsing their JSON.
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
from bus.envelope import Envelope
from domain.db import make_engine, upgrade
from projections import log as event_log
from projections.models import GENESIS_HASH, LoggedEvent, LogHead, UpdateRow
from projections.replay import replay

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
        result = replay(source, target, batch_size=batch)
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
            ["CPU per event: log reader process (read, chain check, decode, fold)", "",
             f"{result.reader_cpu * 1e6 / n:,.0f} µs", "", ""],
            ["peak RSS: main process, log reader process", "",
             f"{peak_rss_mib():,.0f} MiB, {result.reader_peak_rss_kib / 1024:,.0f} MiB", "", ""],
        ],
        notes=[
            f"source log generated in {generated:,.1f} s ({size:,.0f} MiB SQLite file, hash chain computed as the "
            f"appender does) and verified in {verify_s:,.1f} s before the replay",
            "event mix: hot_server updates (pull, pulled, push, pushed, request of 20 IPs × 5 servers, started, "
            "20 × IP finished, completed) and every 5th a hot_client update (4 CDN dirs); 20 updates interleaved",
            "two processes, one core each: a log reader process (multiprocessing, spawn; started and always "
            "stopped by the replay) reads the source in chunks of 2,000 rows, checks each row's hash link, decodes "
            "and validates its envelope and event (pydantic, as the live consumer did), compares the row's id, type "
            "and update columns with the decoded envelope, and folds it into the view with the live projection's "
            "reducers on plain in-memory rows; per window (2,000 events at first, growing by half each time up to "
            "50,000) it derives each update's counts, stage and status once and hands the main process the "
            "window's view rows as plain tuples, pickled through a spool file. Between windows it keeps the rows of "
            "the updates still in progress (touched in the window, not completed); one let go and touched again is "
            "read back from the target once the main process has committed the window that last wrote it. The main "
            "process only writes, one transaction a window: the log rows copied from the attached source by one "
            "INSERT … SELECT (verbatim), the applied events selected from them, the view rows by executemany "
            "(SQLAlchemy's bind processors), the changed ones by UPDATE. The collector is paused in both processes "
            "(what they hold forms no cycles). The target keeps its indexes up to date as it is built "
            "(building them at the end took 12 s at 1M "
            "events, one scan of the table each, after the reader had finished: ≈ 10 % more time in all); it is "
            "built with its journal in memory and without syncing, then switched back to its write-ahead log and "
            "synced. A window the reader cannot "
            "fold (a reducer raised) or the target refuses is replayed by the main process the careful way (a "
            "savepoint per event around the one it cannot take), and a new reader goes on after it. A replay of "
            "fewer than 50,000 events runs in the main process alone",
            f"the main process waited {result.reader_waited:,.1f} s for the reader: the rate is set by the reader, "
            "the busier of the two, as long as each has a core of its own (two cores shared with other work give "
            "less)",
            "before: ≈ 230 ev/s (per-event savepoints, a SELECT per view row, ORM flushes), then 2,187 ev/s at 1M "
            "events (318 µs/event: batches of 2,000 through the live projection's fast path), then ≈ 6,950 ev/s "
            "(one process, windows of 50,000 in memory), then 10,129 ev/s on 2026-11-24 at 13:46 (the reader "
            "process decoded and pickled the events, the main process folded and wrote them: 97 + 60 µs an event, "
            "≈ 40 of them pickling and unpickling pydantic models; floor 131,027 ev/s then, ratio 0.077)",
            "what changed since: (1) the reducers moved into the reader process, which sends view rows instead of "
            "decoded events; (2) the log rows are copied by SQL from the attached source instead of passing through "
            "Python; (3) decoding ≈ 20 % cheaper (one lookup per type string, the validators called directly, file "
            "names' checks cached); (4) reducers ≈ 30 % cheaper (the order key and UTC time made once per event, an "
            "IP's server rows got or made together); (5) the columns compared with the decoded envelope instead of "
            "a second JSON parse of it; (6) the windows pass through shared memory (/dev/shm), and the target's "
            "indexes are kept up to date instead of built at the end. Same view, field for field, as the live "
            "projection (the replay tests)",
            "machines called '2 × AMD EPYC' differ: this floor was 131,027 ev/s on 2026-11-24 at 13:46 (kernel "
            "6.18.44-fc-v657), 68,000–77,000 ev/s at 16:45 (…-v669) and 34,882 ev/s at 19:42 (…-v782), with the "
            "same code; the replay's ratio to it was 0.199, 0.186 and 0.167 in the runs on the last two. Compare the "
            "ratios to "
            "the floor of the same run: 20,000 ev/s is a ratio of 0.153 on the fastest of them and 0.57 on the "
            "slowest, whose bare aio-pika consume floor (3,500–5,100 ev/s, bench.bus) is the one the goal was "
            "set against",
            "what remains, and why: the replay reads, checks, decodes, validates and folds every event as the live "
            "consumer did, then writes each row; the floor only reads and parses. That is ≈ 250 µs of CPU an event "
            "on the slowest machine (reader ≈ 140: decoding and validating ≈ 29 %, reducers ≈ 33 %, reading and the "
            "hash check ≈ 15 %, pickling the window ≈ 14 %, deriving ≈ 11 %; writer ≈ 110: view-row inserts ≈ 40 %, "
            "the log and applied copy ≈ 27 %, commits ≈ 16 %, as profiled at 16:45), against ≈ 29 µs for "
            "the floor, on two cores: 0.57 of the floor would need under "
            "≈ 100 µs in all. A second folding process (updates split between two readers) would use the cores "
            "better, ≈ 15–20 % at best, since the work is already ≈ 1.6 cores' worth; not taken. Skipping "
            "validation of events the log's hash chain vouches for would cut the decode (≈ 30 % of the reader), "
            "but a replay exists to rebuild the view as today's code reads the log (a changed catalogue must "
            "show), so not taken either",
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
