"""Paired benchmark: the same rebuild, or the same ingest through the broker, in two checkouts, alternating.

Comparing a change with the commit before it on a machine shared with other work needs both measured
the same way, at the same time: each round runs the old checkout and then the new one (the next round
the other way round), each in a fresh process with its own ``PYTHONPATH``, so load that comes and goes
falls on both. A rebuild replays one source log generated once (:func:`bench.replay.generate`) into a
fresh SQLite file; its peak RSS is the process's own and its children's (a reader process, if the
checkout has one), and its CPU seconds are both processes' (a busy machine changes them less than the
wall time: each process gets its share of the cores, two processes two shares). The ingest runs the
checkout's own projection service on a pre-loaded queue (:func:`bench.projection.consume_service`).

    python -m bench.paired rebuild --old ../old --new . --events 1000000 --rounds 2
    python -m bench.paired ingest --old ../old --new . --updates 800 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

_REBUILD = """
import json, resource, sys, time
source, target = sys.argv[1], sys.argv[2]
try:
    from projections.rebuild import rebuild
    run = lambda: rebuild(source, target)
except ImportError:  # the checkout before the rebuild package
    from projections.replay import replay
    run = lambda: replay(source, target, batch_size=2000)
t0 = time.perf_counter()
result = run()
elapsed = time.perf_counter() - t0
me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"events": result.events, "seconds": elapsed, "rss_mib": me.ru_maxrss / 1024,
                  "children_rss_mib": max(kids.ru_maxrss, getattr(result, "reader_peak_rss_kib", 0)) / 1024,
                  "cpu": me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime}))
"""

_INGEST = """
import asyncio, json, resource, sys
import aio_pika
import bench.projection
from bench.bus import drop_vhost, fresh_vhost
from bench.projection import consume_service, database
from bench.projection_events import stream
from bus.contract.envelope import Envelope
from bus.topology import Topology

async def routed_preload(url, queue, payloads, **_routed_already):
    # each event on its own routing key, through the events exchange, as a publisher sends it (the runtime
    # parks an envelope that arrives on another key; bench.projection's preload sends to the queue itself)
    connection = await aio_pika.connect(url)
    channel = await connection.channel(publisher_confirms=True)
    exchange = await channel.get_exchange(Topology().events_exchange)
    sem = asyncio.Semaphore(256)
    async def one(body):
        async with sem:
            key = Envelope.from_bytes(body).routing_key
            await exchange.publish(aio_pika.Message(body, delivery_mode=2), routing_key=key)
    await asyncio.gather(*(one(b) for b in payloads))
    await connection.close()

bench.projection.preload = routed_preload
updates = int(sys.argv[1])
bodies = list(stream(updates))
kind = sys.argv[2]
vhost, url = fresh_vhost()
try:
    with database(kind) as database_url:
        rate, *_ = asyncio.run(consume_service(url, database_url, bodies, 2000, 1000, updates))
finally:
    drop_vhost(vhost)
me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
cpu = me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime
print(json.dumps({"events": len(bodies), "rate": rate, "cpu": cpu}))
"""


def _run(tree: str, code: str, *args: str) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(Path(tree).resolve())}
    out = subprocess.run([sys.executable, "-c", code, *args], env=env, cwd=tree, capture_output=True, text=True,
                         check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{tree}: {out.stderr[-2000:]}")
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def rebuild_rounds(old: str, new: str, events: int, rounds: int, directory: str | None, log: str | None = None
                   ) -> dict[str, list[dict[str, float]]]:
    """``log``: a source log generated before (a SQLite file); else one of ``events`` events is generated."""
    from bench.replay import generate

    runs: dict[str, list[dict[str, float]]] = {"old": [], "new": []}
    with tempfile.TemporaryDirectory(prefix="bench-paired-", dir=directory) as tmp:
        source = f"sqlite:///{Path(log).resolve() if log else Path(tmp) / 'source.db'}"
        if not log:
            generate(source, events)
        for n in range(rounds):
            for name in (("old", "new") if n % 2 == 0 else ("new", "old")):
                target = Path(tmp) / f"target-{name}-{n}.db"
                result = _run(old if name == "old" else new, _REBUILD, source, f"sqlite:///{target}")
                result["rate"] = result["events"] / result["seconds"]
                runs[name].append(result)
                print(name, n, json.dumps(result), flush=True)
                for path in Path(tmp).glob(f"{target.name}*"):
                    path.unlink()
    return runs


def ingest_rounds(old: str, new: str, updates: int, rounds: int, kind: str) -> dict[str, list[dict[str, float]]]:
    runs: dict[str, list[dict[str, float]]] = {"old": [], "new": []}
    for n in range(rounds):
        for name in (("old", "new") if n % 2 == 0 else ("new", "old")):
            result = _run(old if name == "old" else new, _INGEST, str(updates), kind)
            runs[name].append(result)
            print(name, n, json.dumps(result), flush=True)
    return runs


def summary(runs: dict[str, list[dict[str, float]]], key: str) -> str:
    """Each side's median and range of ``key``, and the new median over the old."""
    parts = []
    for name in ("old", "new"):
        values = [r[key] for r in runs[name]]
        parts.append(f"{name}: median {statistics.median(values):,.0f} (range {min(values):,.0f}–{max(values):,.0f}, "
                     f"{len(values)} runs)")
    ratio = statistics.median(r[key] for r in runs["new"]) / statistics.median(r[key] for r in runs["old"])
    return "; ".join(parts) + f"; new/old {ratio:.2f}"


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["rebuild", "ingest"])
    parser.add_argument("--old", required=True, help="the checkout measured first in even rounds")
    parser.add_argument("--new", default=".")
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--updates", type=int, default=800)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite", help="for the ingest")
    parser.add_argument("--dir", default=None, help="where the SQLite files go (default: the system's temp dir)")
    parser.add_argument("--log", default=None, help="rebuild this SQLite log (bench.replay.generate) instead")
    args = parser.parse_args()
    if args.what == "rebuild":
        runs = rebuild_rounds(args.old, args.new, args.events, args.rounds, args.dir, args.log)
        print("events/s:", summary(runs, "rate"))
        print("CPU s (process and its children):", summary(runs, "cpu"))
        print("peak RSS MiB (own):", summary(runs, "rss_mib"))
        print("peak RSS MiB (children):", json.dumps({k: [r["children_rss_mib"] for r in v] for k, v in runs.items()}))
    else:
        runs = ingest_rounds(args.old, args.new, args.updates, args.rounds, args.database)
        print("events/s:", summary(runs, "rate"))
        print("CPU s (whole run, including the broker preload):", summary(runs, "cpu"))


if __name__ == "__main__":
    cli()
