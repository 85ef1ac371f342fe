"""Replaying the event log: rebuild the status view in another database, or re-publish a slice.

A rebuild copies the source's log rows verbatim (so the target's log verifies and the
dashboard shows each update's raw events), checking each row's link in the hash chain as
it goes, and folds every event into the view with the live projection's reducers
(:func:`projections.view.apply`), in log order. The reducers take their times from the events
only, so the same log gives the same view, field for field.

The log is read in chunks, its links checked and its events decoded, and replayed in windows of
``window`` events, each one transaction, with the view in memory. A long log is read, decoded and
folded in a second process (:mod:`projections.replay_process`, :mod:`projections.replay_fold`),
which hands this one each window's view rows to write (:func:`projections.replay_window.write_folded`),
so two cores share the work; a short one is replayed here (:mod:`projections.replay_window`).
An event whose reducer raises is left out as the live projection left it: the window is rolled
back, the events before it replayed again, and it goes through :func:`_replay_batch` with the
``batch_size`` events after it (one transaction, a savepoint per event if needed:
:func:`projections.ingest.apply_logged`, as the live projection).

Re-publishing sends the stored envelopes to the events exchange with
:data:`bus.publisher.REPLAYED_HEADER` set: live consumers ack and ignore them unless they
opted in (``ConsumerService(accept_replayed=True)``), which a new consumer catching up does.
"""

from __future__ import annotations

import gc
import logging
import os
import socket
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import Engine, delete, func, insert, literal, select
from sqlalchemy import event as sqlalchemy_event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from bus.envelope import Envelope, EnvelopeError
from bus.publisher import REPLAYED_HEADER
from bus.registry import DEFAULT_REGISTRY
from domain.db import make_engine, upgrade
from projections import log as event_log
from projections import replay_fold, replay_process, replay_reader, replay_window, view
from projections.audit import LogFilter, iter_rows, read_head
from projections.ingest import apply_logged
from projections.models import (
    GENESIS_HASH,
    VIEW_TABLES,
    AppliedEvent,
    LoggedEvent,
    RejectedEvent,
    UpdateRow,
)

log = logging.getLogger(__name__)

LOG_POSITION_HEADER = "x-hotupdate-log-position"
"""Set on a re-published event: its position in the log it came from."""

WINDOW = 50_000
"""Events replayed in memory per transaction (:mod:`projections.replay_window`): bounds the memory held."""

READER_PROCESS_FROM = 50_000
"""A replay of this many events or more reads and decodes the log in a second process (starting one takes ≈ 1 s)."""

Progress = Callable[[int, int], None]
"""Called with (events done, events in all) as a replay goes on."""


class ReplayError(Exception):
    """The replay cannot be done as asked (the reason is fit to show the operator)."""


class TargetNotEmpty(ReplayError):
    pass


class ReplayStopped(ReplayError):
    """The replay began but could not go on (its reader process died): the target holds a part."""


class SourceLogBroken(ReplayError):
    def __init__(self, position: int, reason: str, replayed: int) -> None:
        super().__init__(
            f"the source log is broken at position {position}: {reason}; "
            f"the target holds the view of the {replayed} events before it"
        )
        self.position, self.reason, self.replayed = position, reason, replayed


@dataclass(frozen=True)
class Unapplied:
    """A logged event the view could not take (the live projection could not either)."""

    position: int
    event_id: str
    type: str
    reason: str


@dataclass
class ReplayResult:
    events: int = 0
    applied: int = 0
    last_position: int = 0
    last_hash: str = GENESIS_HASH
    unapplied: list[Unapplied] = field(default_factory=list)
    reader_cpu: float = 0.0
    """CPU seconds of the log reader process (0 when the log was read in this process)."""
    reader_waited: float = 0.0
    """Seconds this process waited for the log reader process."""
    reader_peak_rss_kib: int = 0
    """The log reader process's peak resident memory."""


# --- rebuilding the view ---------------------------------------------------------------------


def replay(
    source_url: str,
    target_url: str,
    *,
    until_position: int | None = None,
    until_time: datetime | None = None,
    force: bool = False,
    batch_size: int = 500,
    window: int = WINDOW,
    reader_process: bool | None = None,
    progress: Progress | None = None,
) -> ReplayResult:
    """Rebuild the status view of ``source_url``'s log in ``target_url`` (migrated first).

    Only the log up to ``until_position``, and up to the last event received at or before
    ``until_time``, is replayed. A target holding projection data is refused unless
    ``force``, which empties its projection tables first. ``window`` events are replayed in
    memory per transaction (what the memory held grows with it); ``batch_size`` bounds the
    transactions of the careful path, taken around an event the view cannot take. The log is
    read, checked, decoded and folded in a second process (:mod:`projections.replay_process`) if
    ``reader_process``, by default when there are :data:`READER_PROCESS_FROM` events or more.
    """
    if batch_size < 1 or window < 1:
        raise ReplayError(f"a batch holds at least one event, not {min(batch_size, window)}")
    if same_database(source_url, target_url):
        raise ReplayError("the target is the source database")
    upgrade(target_url, "projection")
    source, target = make_engine(source_url), _target_engine(target_url)
    try:
        prepare_target(target, force=force)
        with Session(source) as session:
            end = replay_end(session, until_position=until_position, until_time=until_time)
            return _rebuild(session, source_url, target, end, batch_size=batch_size, window=window,
                            reader_process=reader_process, progress=progress)
    finally:
        _settle(target)
        source.dispose()
        target.dispose()


def _target_engine(url: str) -> Engine:
    """The target's engine; on SQLite, set up for building a file from scratch (see :func:`_settle`).

    Its rollback journal is kept in memory (no write-ahead log: each page is written once, not to
    the log and then again into the file) and nothing is synced to disk until the end. A rolled
    back window is still rolled back; a replay killed mid-way (``kill -9``, a crash) can leave the
    target unusable: replay again into a new file.
    """
    engine = make_engine(url)
    if engine.dialect.name == "sqlite":

        @sqlalchemy_event.listens_for(engine, "connect")
        def _building(dbapi_conn: Any, _record: Any) -> None:  # after make_engine's own pragmas
            cursor = dbapi_conn.cursor()
            try:
                cursor.execute("PRAGMA journal_mode=MEMORY")
            except sqlite3.OperationalError:  # another connection has the file open: keep the write-ahead log
                log.info("replay: the target is open elsewhere; it keeps its write-ahead log")
            cursor.execute("PRAGMA synchronous=OFF")
            cursor.execute("PRAGMA cache_size=-262144")  # KiB: the log's unique indexes take random keys
            cursor.close()

    return engine


def _settle(target: Engine) -> None:
    """Leave a SQLite target as every other connection expects it (write-ahead log), synced to disk."""
    if target.dialect.name != "sqlite":
        return
    with target.connect() as connection:
        connection.exec_driver_sql("PRAGMA synchronous=FULL")
        connection.exec_driver_sql("PRAGMA journal_mode=WAL")
        connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    target.dispose()
    path = target.url.database
    if path and path != ":memory:" and Path(path).exists():
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def replay_end(session: Session, *, until_position: int | None = None, until_time: datetime | None = None) -> int:
    """The last position to replay: the head, or less if a position or a time bounds it."""
    end = read_head(session)[0]
    if until_position is not None:
        end = min(end, until_position)
    if until_time is not None:
        # The view at that instant is the log's prefix committed by then: it ends before
        # the first event received later (received times grow with positions).
        later = session.execute(
            select(func.min(LoggedEvent.position)).where(
                LoggedEvent.received_at > until_time.astimezone(UTC), LoggedEvent.position <= end
            )
        ).scalar_one_or_none()
        if later is not None:
            end = later - 1
    return max(end, 0)


def prepare_target(target: Engine, *, force: bool) -> None:
    """Refuse a target with projection data (unless ``force``: then empty its projection tables)."""
    tables: tuple[type[Any], ...] = (LoggedEvent, AppliedEvent, RejectedEvent, *VIEW_TABLES)
    with Session(target) as session, session.begin():
        head = event_log.lock_head(session)
        used = [
            model.__tablename__ for model in tables
            if session.execute(select(literal(1)).select_from(model).limit(1)).first() is not None
        ]
        if head.position and not used:
            used.append("projection_head")
        if not used:
            return
        if not force:
            raise TargetNotEmpty(f"the target already holds data ({', '.join(used)}); pass --force to replace it")
        log.warning("replay: emptying the target's %s", ", ".join(used))
        for model in tables:
            session.execute(delete(model))
        head.position, head.hash = 0, GENESIS_HASH
        head.version += 1  # an open dashboard on the target reloads
        event_log.store_head(session, head)


def _rebuild(source: Session, source_url: str, target: Engine, end: int, *, batch_size: int, window: int,
             reader_process: bool | None, progress: Progress | None) -> ReplayResult:
    result = ReplayResult()
    if progress:
        progress(0, end)
    reader = replay_reader.LogReader(source.get_bind().dialect, target.dialect.name)
    if reader_process is None:
        reader_process = end >= READER_PROCESS_FROM
    # What a window holds (millions of objects) forms no cycles: the collector's passes over it
    # would cost as much as decoding does (as in a window: replay_window).
    collecting = gc.isenabled()
    gc.disable()
    try:
        if not reader_process:
            _replay_chunks(replay_reader.read_chunks(source, reader, end), target, reader, result,
                           batch_size=batch_size, window=window, progress=progress, end=end)
            return result
        source.close()  # the reader process reads the source from here on
        _replay_folded(source, source_url, target, reader, result, end, batch_size=batch_size, window=window,
                       progress=progress)
        return result
    except replay_process.ReaderError as exc:
        raise ReplayStopped(f"{exc}; the target holds the view of the first {result.events} events") from None
    finally:
        if collecting:
            gc.enable()


def _replay_folded(source: Session, source_url: str, target: Engine, reader: replay_reader.LogReader,
                   result: ReplayResult, end: int, *, batch_size: int, window: int, progress: Progress | None) -> None:
    """Replay with a reader process that folds (:mod:`projections.replay_process`); this process writes.

    A window the reader could not fold (a reducer raised) or the target refused is replayed here,
    the careful way, and a new reader goes on after it (it reads back what it needs of the target).
    """
    position, prev_hash = 0, GENESIS_HASH  # the target is empty (prepare_target)
    target_url = target.url.render_as_string(hide_password=False)
    source_path = source.get_bind().engine.url.database
    with target.connect() as connection, replay_window.source_attached(
            connection, source_path if reader.stored else None):
        while position < end:
            careful: tuple[int, str, int] | None = None  # (after position, its hash, up to position)
            with replay_process.ReaderProcess(source_url, target_url, end, position=position, prev_hash=prev_hash,
                                              window=window, first_window=max(window // 25, 1)) as process:
                for written, message in enumerate(process, start=1):
                    if isinstance(message, replay_fold.FoldFailed):
                        log.debug("replay: window from %d goes the careful way: %s", message.first_position,
                                  message.reason)
                        careful = (message.first_position - 1, message.prev_hash, message.last_position)
                        break
                    if not isinstance(message, replay_fold.FoldedWindow):  # the log is broken there
                        raise SourceLogBroken(message[0], message[1], result.events)
                    try:
                        done = replay_window.write_folded(connection, message, stored=reader.stored)
                    except Exception as exc:  # the target refused a row: find the event the careful way
                        log.info("replay: window at %d goes the careful way: %r", message.first_position, exc)
                        careful = (message.first_position - 1, message.prev_hash, message.last_position)
                        break
                    process.committed(written)
                    _take(done, result, progress, end)
                    position, prev_hash = done.last_position, done.last_hash
            result.reader_cpu += process.cpu
            result.reader_waited += process.waited
            result.reader_peak_rss_kib = max(result.reader_peak_rss_kib, process.peak_rss_kib)
            if careful is None:
                return
            after, after_hash, up_to = careful
            chunks = replay_reader.read_chunks(source, reader, up_to, position=after, prev_hash=after_hash)
            _replay_chunks(chunks, target, reader, result, batch_size=batch_size, window=window, progress=progress,
                           end=end)
            source.close()
            position, prev_hash = result.last_position, result.last_hash


def _replay_chunks(chunks: Iterator[replay_reader.Chunk], target: Engine, reader: replay_reader.LogReader,
                   result: ReplayResult, *, batch_size: int, window: int, progress: Progress | None,
                   end: int) -> None:
    """Replay the checked ``chunks`` in windows of ``window`` rows; raise at a broken link."""
    for rows in replay_reader.windows(chunks, window, window):
        if not isinstance(rows, list):  # the row after the last window does not chain on
            raise SourceLogBroken(rows[0], rows[1], result.events)
        _replay_rows(target, reader, rows, result, batch_size=batch_size, progress=progress, end=end)


def _replay_rows(target: Engine, reader: replay_reader.LogReader, rows: list[tuple[Any, ...]],
                 result: ReplayResult, *, batch_size: int, progress: Progress | None, end: int) -> None:
    """Replay ``rows`` (checked) in memory; an event whose reducer fails goes through
    :func:`_replay_batch` instead."""
    pending = rows
    while pending:
        try:
            done = replay_window.replay_window(target, pending, stored=reader.stored, checked=True)
            _take(done, result, progress, end)
            return
        except replay_window.ReducerFailed as failed:
            log.debug("replay: the reducer of position %d raised: %r", pending[failed.index][0], failed.error)
            index = failed.index
        except Exception as exc:  # a database error writing the window: find the event the careful way
            log.info("replay: window at %d goes batch by batch: %r", pending[0][0], exc)
            index = 0
        if index:  # the same events on the same state: they apply again
            again = replay_window.replay_window(target, pending[:index], stored=reader.stored, checked=True)
            _take(again, result, progress, end)
        careful = [reader.values(row) for row in pending[index:index + batch_size]]
        broken = _replay_batch(target, careful, result)
        if progress:
            progress(result.events, end)
        if broken is not None:  # cannot be: the reader checked the links
            raise SourceLogBroken(broken[0], broken[1], result.events)
        pending = pending[index + batch_size:]


def _take(done: replay_window.WindowResult, result: ReplayResult, progress: Progress | None, end: int) -> None:
    result.events += done.events
    result.applied += done.applied
    result.last_position, result.last_hash = done.last_position, done.last_hash
    result.unapplied.extend(Unapplied(*u) for u in done.unapplied)
    if progress:
        progress(result.events, end)
    if done.broken is not None:  # cannot be: the reader checked the links
        raise SourceLogBroken(done.broken[0], done.broken[1], result.events)


def _replay_batch(target: Engine, rows: list[dict[str, Any]], result: ReplayResult) -> tuple[int, str] | None:
    """Copy and apply ``rows`` in one transaction; returns (position, reason) of a row that broke the chain.

    Tried in one go first (view rows cached, one multi-row INSERT for the applied rows); if a
    reducer raises, that transaction is rolled back and the batch is done event by event,
    a savepoint each, so exactly the events the live projection could not apply are left out.
    """
    try:
        return _replay_batch_fast(target, rows, result)
    except Exception as exc:
        log.debug("replay: batch at %d goes event by event: %r", rows[0]["position"], exc)
    return _replay_batch_careful(target, rows, result)


def _replay_batch_fast(target: Engine, rows: list[dict[str, Any]], result: ReplayResult) -> tuple[int, str] | None:
    broken: tuple[int, str] | None = None
    unapplied: list[Unapplied] = []
    with Session(target) as session, session.begin():
        session.info[view.ROW_CACHE] = view.RowCache()
        head = event_log.lock_head(session)
        good, position, prev_hash, broken = _chained(rows, head)
        decoded: list[tuple[dict[str, Any], Envelope, Any]] = []
        for row in good:
            try:
                envelope = Envelope.from_bytes(row["envelope"].encode("utf-8"))
                decoded.append((row, envelope, DEFAULT_REGISTRY.decode(envelope)))
            except ValueError as exc:  # as in _apply: the catalogue changed since
                unapplied.append(Unapplied(row["position"], row["event_id"], row["type"], f"cannot be decoded: {exc}"))
        connection = session.connection()
        if good:
            connection.execute(insert(LoggedEvent), good)
        view.prefetch_updates(session, (envelope.updateid for _, envelope, _ in decoded))
        view.prefetch_servers(session, (event for _, _, event in decoded), (envelope for _, envelope, _ in decoded))
        applied_rows = []
        for row, envelope, event in decoded:
            view.apply(session, envelope, event, derive=False)  # raises: the careful path takes over
            applied_rows.append({"event_id": envelope.id, "position": row["position"], "updateid": envelope.updateid})
        if applied_rows:
            connection.execute(insert(AppliedEvent), applied_rows)
        view.refresh_all(session, (r["updateid"] for r in applied_rows))
        head.position, head.hash = position, prev_hash
        head.version += 1
        event_log.store_head(session, head)
    result.unapplied.extend(sorted(unapplied, key=lambda u: u.position))
    result.applied += len(applied_rows)
    result.events += len(good)
    result.last_position, result.last_hash = position, prev_hash
    return broken


def _chained(rows: list[dict[str, Any]], head: event_log.Head
             ) -> tuple[list[dict[str, Any]], int, str, tuple[int, str] | None]:
    """The rows that chain on from ``head`` (up to the first that does not), the new end, and what broke."""
    good: list[dict[str, Any]] = []
    position, prev_hash = head.position, head.hash
    for row in rows:
        problem = event_log.row_problem(_chain_row(row), position + 1, prev_hash)
        if problem:
            return good, position, prev_hash, (row["position"], problem)
        good.append(row)
        position, prev_hash = row["position"], row["hash"]
    return good, position, prev_hash, None


def _replay_batch_careful(target: Engine, rows: list[dict[str, Any]], result: ReplayResult
                          ) -> tuple[int, str] | None:
    with Session(target) as session, session.begin():
        head = event_log.lock_head(session)
        good, position, prev_hash, broken = _chained(rows, head)
        if good:
            # All of the batch's log rows first: a failing reducer's savepoint must not take one along.
            session.execute(insert(LoggedEvent), good)
        touched: dict[str, None] = {}  # the updates to refresh, in first-touched order
        for row in good:
            problem = _apply(session, row)
            if problem:
                result.unapplied.append(Unapplied(row["position"], row["event_id"], row["type"], problem))
            else:
                result.applied += 1
                touched[row["updateid"]] = None
        for updateid in touched:
            view.refresh(session, session.get_one(UpdateRow, updateid))
        head.position, head.hash = position, prev_hash
        head.version += 1
        event_log.store_head(session, head)
    result.events += len(good)
    result.last_position, result.last_hash = position, prev_hash
    return broken


def _chain_row(row: dict[str, Any]) -> event_log.ChainRow:
    return event_log.ChainRow(
        row["position"], row["event_id"], row["type"], row["updateid"], row["prev_hash"], row["hash"], row["envelope"],
        row.get("publisher"),
    )


def _apply(session: Session, row: dict[str, Any]) -> str:
    """Fold one logged event into the view as the live projection does; the reason if it could not."""
    try:
        envelope = Envelope.from_bytes(row["envelope"].encode("utf-8"))
        event = DEFAULT_REGISTRY.decode(envelope)
    except ValueError as exc:  # EnvelopeError and the registry's errors: the catalogue changed since
        return f"cannot be decoded: {exc}"
    try:
        # Counts, stage and status are derived once per update per batch (in _replay_batch).
        apply_logged(session, envelope, event, row["position"], derive=False)
    except Exception as exc:  # the live projection left it unapplied for the same reason
        return f"{type(exc).__name__}: {exc}"
    return ""


def same_database(a: str, b: str) -> bool:
    """Whether two URLs name the same database (best effort: SQLite paths resolved, host names looked up)."""
    ua, ub = make_url(a), make_url(b)
    if ua.get_backend_name() != ub.get_backend_name():
        return False
    if ua.get_backend_name() == "sqlite":
        if not ua.database or not ub.database or ":memory:" in (ua.database, ub.database):
            return False
        return Path(ua.database).resolve() == Path(ub.database).resolve()
    return (ua.port, ua.database) == (ub.port, ub.database) and bool(_addresses(ua.host) & _addresses(ub.host))


def _addresses(host: str | None) -> frozenset[str]:
    try:
        return frozenset(str(info[4][0]) for info in socket.getaddrinfo(host or "localhost", None))
    except OSError:
        return frozenset({host or ""})


# --- re-publishing a slice ---------------------------------------------------------------------


class Publisher(Protocol):
    """What re-publishing needs of a publisher (:class:`bus.publisher.SyncPublisher` is one)."""

    def publish(self, envelope: Envelope, *, headers: dict[str, Any] | None = None) -> Envelope: ...


def count_selected(session: Session, selection: LogFilter) -> tuple[int, int]:
    """(rows selected up to the head, the head's position)."""
    head = read_head(session)[0]
    count = session.execute(
        select(func.count()).select_from(LoggedEvent).where(LoggedEvent.position <= head, *selection.conditions())
    ).scalar_one()
    return int(count), head


def publish_slice(
    engine: Engine, publisher: Publisher, selection: LogFilter, *, progress: Progress | None = None
) -> int:
    """Re-publish the selected events in log order, marked as replayed; returns how many were published.

    Each row's own hash is checked first, and its envelope must serialise back to the
    stored bytes, so what is published is exactly what was logged (same id, same bytes).
    """
    with Session(engine) as session:
        total, head = count_selected(session, selection)
        done = 0
        if progress:
            progress(0, total)
        for position, envelope in _verified_envelopes(iter_rows(session, selection, up_to=head)):
            publisher.publish(envelope, headers={REPLAYED_HEADER: True, LOG_POSITION_HEADER: position})
            done += 1
            if progress:
                progress(done, total)
    return done


def _verified_envelopes(rows: Iterator[Any]) -> Iterator[tuple[int, Envelope]]:
    for row in rows:
        chain = event_log.ChainRow(row.position, row.event_id, row.type, row.updateid, row.prev_hash, row.hash,
                                   row.envelope, row.publisher)
        problem = event_log.row_problem(chain, row.position, row.prev_hash)
        if problem:
            raise ReplayError(f"position {row.position} does not verify ({problem}); nothing after it was published")
        stored = row.envelope.encode("utf-8")
        try:
            envelope = Envelope.from_bytes(stored)
        except EnvelopeError as exc:
            raise ReplayError(f"position {row.position} is not a valid envelope any more ({exc}); "
                              "nothing after it was published") from None
        if envelope.to_bytes() != stored:
            raise ReplayError(f"position {row.position}: the stored envelope does not serialise back to the same "
                              "bytes (the envelope model changed?); nothing after it was published")
        yield row.position, envelope
