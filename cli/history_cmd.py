"""``hotupdate history read``: the broker's stream copy of the events, from a point (:mod:`bus.history`)."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from datetime import UTC, datetime

from bus.history import Start, read_history
from bus.topology import Topology
from cli.bus_commands import amqp_url_argument

_INTERVAL = re.compile(r"^[0-9]+[YMDhms]$")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    history = sub.add_parser("history", help="the stream copy of every event kept by the broker")
    history_sub = history.add_subparsers(dest="history_command", required=True)
    read = history_sub.add_parser("read", help="print events from a point on, one JSON object a line")
    amqp_url_argument(read)
    read.add_argument("--from", dest="start", default="first",
                      help="first, last, next, an offset (0, 1, …), a time (ISO 8601; no zone: UTC) or an "
                           "interval back from now (30m, 2h, 7D)")
    read.add_argument("--limit", type=int, default=None, help="stop after this many events")
    read.add_argument("--idle-seconds", type=float, default=2.0, help="stop when nothing came for this long")
    read.set_defaults(func=_read)


def parse_start(text: str) -> Start:
    """``--from`` as the stream's ``x-stream-offset`` takes it; ValueError naming the forms if none fits."""
    if text in ("first", "last", "next") or _INTERVAL.match(text):
        return text
    if text.isdigit():
        return int(text)
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"--from {text!r}: not first, last, next, an offset, an ISO 8601 time "
                         "or an interval like 30m") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _read(args: argparse.Namespace) -> int:
    try:
        start = parse_start(args.start)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2

    async def main() -> int:
        count = 0
        async for entry in read_history(args.amqp_url, Topology(args.namespace), start=start, limit=args.limit,
                                        idle_seconds=args.idle_seconds):
            line: dict[str, object] = {"offset": entry.offset}
            if entry.envelope is not None:
                line["envelope"] = json.loads(entry.envelope.to_bytes())
            else:
                line["body"] = entry.body.decode("utf-8", errors="replace")
            print(json.dumps(line, ensure_ascii=False), flush=True)
            count += 1
        print(f"{count} events", file=sys.stderr)
        return 0

    return asyncio.run(main())
