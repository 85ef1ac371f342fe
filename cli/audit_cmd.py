"""``hotupdate log verify|export`` and ``hotupdate replay`` (rebuild the view, or re-publish a slice)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import IO

from sqlalchemy import inspect
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from cli.bus_commands import amqp_url_argument
from domain.config import ConfigError, load_config
from domain.db import make_engine
from projections import log as event_log
from projections.log.export import LogFilter, export_log, parse_time, verify_export_file
from projections.log.store import read_head

_LISTED_UNAPPLIED = 20


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    log = sub.add_parser("log", help="the projection's event log: verify its hash chain, export it")
    log_sub = log.add_subparsers(dest="log_command", required=True)
    verify = log_sub.add_parser(
        "verify", help="walk the hash chain of the log (or of an export) and report the first broken position"
    )
    _database_argument(verify)
    verify.add_argument("--file", help="verify an export (JSON Lines) instead of a database; - for stdin")
    verify.set_defaults(func=_verify)

    export = log_sub.add_parser("export", help="write (a slice of) the log as JSON Lines that verify on their own")
    _database_argument(export)
    _filter_arguments(export)
    export.add_argument("-o", "--output", default="-", help="file to write, or - for standard output (default)")
    export.set_defaults(func=_export)

    replay = sub.add_parser(
        "replay", help="rebuild the status view from the log into a fresh database, or re-publish a slice of the log"
    )
    _database_argument(replay, what="the source: the projection database whose log is replayed")
    replay.add_argument("--into", metavar="TARGET_URL", help="the database to rebuild the view in (migrated first)")
    until = replay.add_mutually_exclusive_group()
    until.add_argument("--until-position", type=int, metavar="N", help="replay the log up to position N")
    until.add_argument("--until-time", type=_time, metavar="ISO",
                       help="replay what the log had received by then (UTC unless the time has a zone)")
    replay.add_argument("--force", action="store_true", help="replace the target's projection data if it has any")
    replay.add_argument("--batch-size", type=int, default=10_000,
                        help="events per transaction (held in memory at once)")
    replay.add_argument("--progress", action="store_true", help="draw the progress bar even if stderr is no TTY")
    replay.add_argument("--publish", action="store_true",
                        help="re-publish the selected slice to the exchange, marked as replayed, instead of rebuilding")
    amqp_url_argument(replay)
    _filter_arguments(replay, note=" (with --publish)")
    replay.set_defaults(func=_replay)


# --- arguments --------------------------------------------------------------------------------


def _database_argument(parser: argparse.ArgumentParser, what: str = "the projection database") -> None:
    parser.add_argument(
        "--database-url", default=os.environ.get("HOTUPDATE_PROJECTION_DB_URL"),
        help=f"{what} (env HOTUPDATE_PROJECTION_DB_URL, else the config's projection.database_url)",
    )
    parser.add_argument("--config", default=None, help="configuration file (env HOTUPDATE_CONFIG); optional")


def _filter_arguments(parser: argparse.ArgumentParser, note: str = "") -> None:
    parser.add_argument("--project", help=f"only this project's events{note}")
    parser.add_argument("--area", help=f"only this area code's events{note}")
    parser.add_argument("--update-id", dest="updateid", help=f"only this hot update's events{note}")
    parser.add_argument("--type", dest="event_type", help=f"only this event type, e.g. hotupdate.ip.finished.v1{note}")
    parser.add_argument("--since", type=_time, metavar="ISO", help=f"received at or after (UTC unless zoned){note}")
    parser.add_argument("--until", type=_time, metavar="ISO", help=f"received before (UTC unless zoned){note}")


def _time(text: str) -> datetime:
    try:
        return parse_time(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from None


def _selection(args: argparse.Namespace) -> LogFilter:
    return LogFilter(project=args.project, area=args.area, updateid=args.updateid, type=args.event_type,
                     since=args.since, until=args.until)


def _database_url(args: argparse.Namespace) -> str | None:
    if args.database_url:
        return str(args.database_url)
    if args.config or os.environ.get("HOTUPDATE_CONFIG"):
        return load_config(args.config).projection.database_url
    return None


def _redact(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy understands: say nothing of it
        return "<database>"


def _open_log(args: argparse.Namespace) -> tuple[str | None, str]:
    """(database URL, "") or (None, why not) for a database that holds an event log."""
    try:
        url = _database_url(args)
    except ConfigError as exc:
        return None, str(exc)
    if url is None:
        return None, "name the database: --database-url URL (or HOTUPDATE_PROJECTION_DB_URL, or --config)"
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database and not Path(parsed.database).exists():
        return None, f"no such database file: {parsed.database}"  # connecting would create an empty one
    engine = make_engine(url)
    try:
        if not inspect(engine).has_table("projection_event_log"):
            return None, f"{_redact(url)} holds no event log (run hotupdate db upgrade and the projection first)"
    finally:
        engine.dispose()
    return url, ""


# --- log verify / export --------------------------------------------------------------------------


def _verify(args: argparse.Namespace) -> int:
    if args.file:
        try:
            checked = verify_export_file(args.file)
        except OSError as exc:
            print(f"cannot read {args.file}: {exc}", file=sys.stderr)
            return 2
        print(checked.describe())
        if checked.ok:
            print(event_log.describe_publishers(checked.publishers))
        return 0 if checked.ok else 1

    url, problem = _open_log(args)
    if url is None:
        print(problem, file=sys.stderr)
        return 2
    engine = make_engine(url)
    try:
        with Session(engine) as session:
            result = event_log.verify(session)
            head_position, head_hash = read_head(session)
    finally:
        engine.dispose()
    print(result.describe())
    if result.ok:
        # The head's hash pins the whole log: keep it to check a later export or verification against.
        print(f"log head: position {head_position}, hash {head_hash}")
        print(event_log.describe_publishers(result.publishers))
    return 0 if result.ok else 1


def _export(args: argparse.Namespace) -> int:
    url, problem = _open_log(args)
    if url is None:
        print(problem, file=sys.stderr)
        return 2
    engine = make_engine(url)
    try:
        with Session(engine) as session:
            if args.output == "-":
                summary = export_log(session, _selection(args), sys.stdout.buffer)
                sys.stdout.flush()
            else:
                # Written aside and renamed when complete: a file under the final name is whole.
                final = Path(args.output)
                partial = final.with_name(final.name + ".part")
                with partial.open("wb") as out:
                    summary = export_log(session, _selection(args), out)
                partial.replace(final)
    finally:
        engine.dispose()
    span = f"positions {summary.first_position}..{summary.last_position}" if summary.count else "no events"
    print(f"exported {summary.count} events ({span}; log head {summary.head[0]}) to {args.output}; "
          f"sha256 {summary.sha256}", file=sys.stderr)
    return 0


# --- replay ------------------------------------------------------------------------------------------


class ProgressBar:
    """``\\r[####....] 12345/100000 events 8,000/s`` redrawn in place, at most ``per_second`` times a second."""

    def __init__(self, stream: IO[str], *, width: int = 30, per_second: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._stream, self._width, self._interval, self._clock = stream, width, 1.0 / per_second, clock
        self._start: float | None = None  # the first call: the rate leaves out set-up such as migrations
        self._drawn_at: float | None = None
        self._drawn_length = 0

    def __call__(self, done: int, total: int) -> None:
        now = self._clock()
        if self._start is None:
            self._start = now
        final = done >= total
        if not final and self._drawn_at is not None and now - self._drawn_at < self._interval:
            return
        filled = self._width if total <= 0 else min(self._width, self._width * done // total)
        rate = done / max(now - self._start, 1e-6)
        line = f"[{'#' * filled}{'.' * (self._width - filled)}] {done}/{total} events {rate:,.0f}/s"
        # Blank out a longer line drawn before (the rate can get shorter), leaving the cursor after the new one.
        blank = "\r" + " " * self._drawn_length if len(line) < self._drawn_length else ""
        self._stream.write(blank + "\r" + line)
        self._stream.flush()
        self._drawn_at, self._drawn_length = now, len(line)

    def close(self) -> None:
        if self._drawn_at is not None:
            self._stream.write("\n")
            self._stream.flush()


def _progress_bar(args: argparse.Namespace) -> ProgressBar | None:
    return ProgressBar(sys.stderr) if args.progress or sys.stderr.isatty() else None


def _replay(args: argparse.Namespace) -> int:
    url, problem = _open_log(args)
    if url is None:
        print(problem, file=sys.stderr)
        return 2
    filters = [f"--{n.replace('_', '-')}" for n in ("project", "area", "updateid", "event_type", "since", "until")
               if getattr(args, n) is not None]
    if args.publish:
        if args.into or args.until_position is not None or args.until_time is not None or args.force:
            print("--publish re-publishes a slice: use the filters (--since/--until …), not --into, --until-* "
                  "or --force", file=sys.stderr)
            return 2
        return _publish(args, url)
    if not args.into:
        print("name the database to rebuild the view in: --into URL (or pass --publish)", file=sys.stderr)
        return 2
    if filters:
        print(f"{', '.join(filters)} select what --publish sends; a rebuild replays the whole log "
              "(bound it with --until-position or --until-time)", file=sys.stderr)
        return 2
    return _rebuild(args, url)


def _rebuild(args: argparse.Namespace, url: str) -> int:
    from projections.rebuild import RebuildError, SourceLogBroken, rebuild

    if args.until_time is not None:
        print(f"replaying what the log had received by {args.until_time.isoformat()}", file=sys.stderr)
    bar = _progress_bar(args)
    try:
        result = rebuild(url, args.into, until_position=args.until_position, until_time=args.until_time,
                         force=args.force, window=args.batch_size, progress=bar)
    except SourceLogBroken as exc:
        _close(bar)
        print(exc, file=sys.stderr)
        return 1
    except RebuildError as exc:
        _close(bar)
        print(f"replay refused: {exc}", file=sys.stderr)
        return 2
    _close(bar)
    print(f"replayed {result.events} events (up to position {result.last_position}) into {_redact(args.into)}: "
          f"{result.applied} applied, {len(result.unapplied)} not applied")
    for u in result.unapplied[:_LISTED_UNAPPLIED]:
        print(f"  not applied: position {u.position} {u.type} {u.event_id}: {u.reason}")
    if len(result.unapplied) > _LISTED_UNAPPLIED:
        print(f"  … and {len(result.unapplied) - _LISTED_UNAPPLIED} more")
    return 0


def _publish(args: argparse.Namespace, url: str) -> int:
    from bus.publisher import PublishError, SyncPublisher
    from bus.topology import Topology
    from projections.log.republish import RepublishError, publish_slice

    engine = make_engine(url)
    bar = _progress_bar(args)
    try:
        with SyncPublisher(args.amqp_url, Topology(args.namespace)) as publisher:
            count = publish_slice(engine, publisher, _selection(args), progress=bar)
    except (PublishError, RepublishError) as exc:
        _close(bar)
        print(f"replay --publish stopped: {exc}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    _close(bar)
    print(f"re-published {count} events to {Topology(args.namespace).events_exchange}, marked as replayed")
    return 0


def _close(bar: ProgressBar | None) -> None:
    if bar is not None:
        bar.close()
