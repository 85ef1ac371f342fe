"""Reading the log for a replay: the rows, their hash links checked, their events decoded — in a second process.

Reading the source, checking each row's link in the hash chain and decoding (validating) its
envelope and event take about a third of a replay's CPU, and depend on nothing the view holds. A
rebuild of many events does them in a process of its own (:class:`ReaderProcess`, started with
"spawn": the parent holds SQLite connections, which a forked child must not inherit), which sends
the parent the decoded events in chunks while the parent folds the previous ones into the view: two
cores instead of one. A small replay reads in its own process (:func:`read_chunks`; starting the
reader costs ≈ 1 s), and decodes each event as its window applies it.

Each chunk goes as one pickle. The pydantic models are pickled with :func:`_reduce_model` (their
``__dict__`` and the set of fields given, as pydantic's own ``__getstate__`` does, minus the
Python-level calls per object: ≈ a third cheaper each way); a model with extra or private
attributes takes pydantic's own path.
"""

from __future__ import annotations

import contextlib
import gc
import io
import logging
import multiprocessing
import pickle
import queue
import resource
import signal
import tempfile
import time
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from sqlalchemy import DateTime, Dialect, select
from sqlalchemy.orm import Session

from bus.envelope import Envelope
from bus.events import Event
from bus.registry import DEFAULT_REGISTRY
from domain.db import make_engine
from projections import log as event_log
from projections.models import GENESIS_HASH, LoggedEvent, as_utc

log = logging.getLogger(__name__)

LOG_COLUMNS: tuple[str, ...] = tuple(c.name for c in LoggedEvent.__table__.columns)
"""The order of a source row's values."""

_POSITION = LOG_COLUMNS.index("position")
_HASH = LOG_COLUMNS.index("hash")
_ENVELOPE = LOG_COLUMNS.index("envelope")
_CHAIN = [LOG_COLUMNS.index(n) for n in ("position", "event_id", "type", "updateid", "prev_hash", "hash", "envelope")]

CHUNK = 2_000
"""Rows per chunk sent by the reader process (≈ 3 MB pickled)."""

Decoded = tuple[Envelope, Event] | str
"""A row's envelope and (newest) event, or why it cannot be decoded ("cannot be decoded: …")."""


@dataclass
class Chunk:
    """Consecutive log rows that chain on from the previous chunk's, each with its decoded event.

    ``broken``: (position, reason) of the row after the last one, which does not chain on (or is
    missing): the last chunk of a broken log has it.
    """

    rows: list[tuple[Any, ...]]
    decoded: list[Decoded | None]  # None: not decoded yet (the window decodes it)
    broken: tuple[int, str] | None = None
    packed: bytes | None = None  # instead of ``decoded``: the list pickled by :func:`dumps`


class Decodings:
    """A window's decoded events, by index; a chunk's are unpickled only when the window reaches them.

    Unpickled just before they are applied they are still in the processor's caches, and a window
    holds the objects of one chunk at a time instead of its 50,000 events' (≈ 350 MB).
    """

    def __init__(self, items: list[Decoded | None] | None = None) -> None:
        self.items: list[Decoded | None] = items if items is not None else []
        self.packed: dict[int, tuple[int, bytes]] = {}  # first index → (rows, pickled list)

    def __len__(self) -> int:
        return len(self.items)

    def add(self, chunk: Chunk) -> None:
        if chunk.packed is None:
            self.items += chunk.decoded
        else:
            self.packed[len(self.items)] = (len(chunk.rows), chunk.packed)
            self.items += [None] * len(chunk.rows)

    def take(self, index: int) -> Decoded | None:
        """The event at ``index``, let go of here (None if it was taken already: decode it again)."""
        if index in self.packed:
            count, data = self.packed.pop(index)
            self.items[index:index + count] = pickle.loads(data)  # noqa: S301 - our own reader's pickles
        item, self.items[index] = self.items[index], None
        return item

    def split(self, at: int) -> tuple[Decodings, Decodings]:
        """The events before ``at`` and from it on (a chunk that straddles ``at`` is unpickled)."""
        for first in [i for i in self.packed if i < at < i + self.packed[i][0]]:
            count, data = self.packed.pop(first)
            self.items[first:first + count] = pickle.loads(data)  # noqa: S301 - our own reader's pickles
        before, after = Decodings(self.items[:at]), Decodings(self.items[at:])
        for first, packed in self.packed.items():
            if first < at:
                before.packed[first] = packed
            else:
                after.packed[first - at] = packed
        return before, after


class ReaderError(Exception):
    """The reader process failed or died (the reason is fit to show the operator)."""


def decode_row(envelope_text: str) -> Decoded:
    """The row's envelope and event, validated as the live consumer validated them, or why not."""
    try:
        envelope = Envelope.from_bytes(envelope_text.encode("utf-8"))
        return envelope, DEFAULT_REGISTRY.decode(envelope)
    except ValueError as exc:  # EnvelopeError and the registry's errors: the catalogue changed since
        return f"cannot be decoded: {exc}"


class LogReader:
    """Reads the source's log rows, values in :data:`LOG_COLUMNS` order.

    From SQLite into SQLite (``stored``) the values are read and written as stored (times as
    SQLAlchemy's text), so they are copied verbatim without being parsed and formatted again;
    otherwise as Python values (times in UTC). :meth:`values` gives a row's Python values either way.
    """

    def __init__(self, source_dialect: Dialect, target_dialect_name: str) -> None:
        self.dialect = source_dialect
        self.stored = source_dialect.name == "sqlite" and target_dialect_name == "sqlite"
        table = LoggedEvent.__table__
        self.columns = [table.c[name] for name in LOG_COLUMNS]
        self.times = [i for i, c in enumerate(self.columns) if isinstance(c.type, DateTime)]
        self.parse = [c.type.dialect_impl(source_dialect).result_processor(source_dialect, None)
                      for c in self.columns]

    def read(self, session: Session, after: int, end: int, limit: int) -> list[tuple[Any, ...]]:
        table = LoggedEvent.__table__
        query = (select(*self.columns).where(table.c.position > after, table.c.position <= end)
                 .order_by(table.c.position).limit(limit))
        if self.stored:  # the same SELECT, without SQLAlchemy's processing of each value
            compiled = query.compile(dialect=self.dialect, compile_kwargs={"literal_binds": True})
            return [tuple(row) for row in session.connection().exec_driver_sql(str(compiled))]
        return [utc_at(row, self.times) for row in session.execute(query)]

    def values(self, row: Sequence[Any]) -> dict[str, Any]:
        if self.stored:
            row = tuple(p(v) if p is not None and v is not None else v for p, v in zip(self.parse, row, strict=True))
        return dict(zip(LOG_COLUMNS, utc_at(row, self.times), strict=True))


def utc_at(row: Sequence[Any], indexes: list[int]) -> tuple[Any, ...]:
    """``row`` with the values at ``indexes`` (its times) in UTC."""
    values = list(row)
    for i in indexes:
        if isinstance(values[i], datetime):  # SQLite hands back naive UTC; PostgreSQL in its session's zone
            values[i] = as_utc(values[i])
    return tuple(values)


def read_chunks(session: Session, reader: LogReader, end: int, *, position: int = 0,
                prev_hash: str = GENESIS_HASH, chunk: int = CHUNK, decode: bool = True, columns: bool = True
                ) -> Iterator[Chunk]:
    """The log after ``position`` (whose hash is ``prev_hash``) up to ``end``, checked and decoded, in chunks.

    ``decode=False``: the events are left for the window to decode (``decoded`` holds None).
    ``columns=False``: whether each row's id, type and update columns agree with its envelope is
    left to the caller, which decodes it anyway (:func:`projections.log.row_problem`).

    Stops after the chunk that ends before a row that does not chain on, or before missing rows.
    """
    while position < end:
        rows = reader.read(session, position, end, chunk)
        if not rows:  # the head promised rows that are not there
            yield Chunk([], [], (position + 1, "rows are missing"))
            return
        broken: tuple[int, str] | None = None
        for index, row in enumerate(rows):
            chain = event_log.ChainRow(*(row[i] for i in _CHAIN))
            problem = event_log.row_problem(chain, position + 1, prev_hash, columns=columns)
            if problem:
                rows, broken = rows[:index], (row[_POSITION], problem)
                break
            position, prev_hash = row[_POSITION], row[_HASH]
        yield Chunk(rows, [decode_row(row[_ENVELOPE]) for row in rows] if decode else [None] * len(rows), broken)
        if broken is not None:
            return


# --- the reader process ----------------------------------------------------------------------


def _rebuild_model(cls: type[BaseModel], values: dict[str, Any], fields_set: set[str]) -> BaseModel:
    """The model pickled by :func:`_reduce_model`: its state restored as pydantic's ``__setstate__`` does."""
    model = cls.__new__(cls)
    object.__setattr__(model, "__dict__", values)
    object.__setattr__(model, "__pydantic_fields_set__", fields_set)
    object.__setattr__(model, "__pydantic_extra__", None)
    object.__setattr__(model, "__pydantic_private__", None)
    return model


def _reduce_model(model: BaseModel) -> Any:
    if model.__pydantic_extra__ is not None or model.__pydantic_private__ is not None:
        return model.__reduce_ex__(pickle.HIGHEST_PROTOCOL)
    return _rebuild_model, (type(model), model.__dict__, model.__pydantic_fields_set__)


def _model_classes(root: type[BaseModel] = BaseModel) -> Iterator[type[BaseModel]]:
    for cls in root.__subclasses__():
        yield cls
        yield from _model_classes(cls)


def dumps(value: Any) -> bytes:
    """Pickle ``value``, its pydantic models the cheap way (loaded back with plain :func:`pickle.loads`)."""
    buffer = io.BytesIO()
    pickler = pickle.Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL)
    pickler.dispatch_table = {cls: _reduce_model for cls in _model_classes()}
    pickler.dump(value)
    return buffer.getvalue()


def _serve(source_url: str, target_dialect_name: str, end: int, chunk: int, spool: str, out: Any, stop: Any
           ) -> None:
    """The reader process: send ("chunk", file of a pickled :class:`Chunk`) messages, then ("done", (CPU
    seconds, peak RSS in KiB)) or ("error", (reason, traceback)).

    The chunks go through files in ``spool``, not through the queue's pipe: a pipe takes 64 KiB at
    a time, and each piece waits for the sending thread to get the interpreter lock back from the
    decoding one (up to 5 ms): a chunk of 3 MB would take a quarter of a second.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent stops us

    def send(message: tuple[str, Any]) -> bool:
        while not stop.is_set():
            try:
                out.put(message, timeout=0.5)
                return True
            except queue.Full:
                continue
        out.cancel_join_thread()  # stopped: exit without waiting for a parent that no longer reads
        return False

    gc.disable()  # the decoded events form no cycles; the collector's passes over them cost ≈ 10 µs an event
    try:
        engine = make_engine(source_url)
        try:
            with Session(engine) as session:
                reader = LogReader(engine.dialect, target_dialect_name)
                for number, part in enumerate(read_chunks(session, reader, end, chunk=chunk)):
                    path = Path(spool) / f"chunk-{number:08d}.pickle"
                    packed = Chunk(part.rows, [], part.broken, dumps(part.decoded))  # unpickled when applied
                    path.write_bytes(pickle.dumps(packed, protocol=pickle.HIGHEST_PROTOCOL))
                    if not send(("chunk", str(path))):
                        return
        finally:
            engine.dispose()
        send(("done", (time.process_time(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)))
    except BaseException as exc:  # whatever it is, the parent must hear of it
        send(("error", (f"{type(exc).__name__}: {exc}", traceback.format_exc())))


class ReaderProcess:
    """:func:`read_chunks` in a process of its own; use as a context manager (it is stopped on leaving).

    Iterating gives the chunks; a reader that fails or dies raises :class:`ReaderError` (not a hang).
    ``cpu`` is the reader's CPU seconds and ``peak_rss_kib`` its peak resident memory once it has finished;
    ``waited``, the seconds the parent waited for it.
    """

    def __init__(self, source_url: str, target_dialect_name: str, end: int, *, chunk: int = CHUNK,
                 ahead: int = 30) -> None:
        context = multiprocessing.get_context("spawn")  # not fork: the parent holds SQLite connections
        self._queue: Any = context.Queue(maxsize=ahead)  # chunks read ahead of the parent: bounds the spool
        self._stop = context.Event()
        self._spool = tempfile.TemporaryDirectory(prefix="hotupdate-replay-")
        self.process = context.Process(
            target=_serve, args=(source_url, target_dialect_name, end, chunk, self._spool.name, self._queue,
                                 self._stop),
            name="hotupdate-replay-reader", daemon=True,
        )
        self.cpu, self.peak_rss_kib = 0.0, 0
        self.waited = 0.0  # seconds the parent waited for a chunk

    def __enter__(self) -> ReaderProcess:
        self.process.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[Chunk]:
        while True:
            kind, payload = self._next()
            if kind == "chunk":
                path = Path(payload)
                data = path.read_bytes()
                path.unlink()
                yield pickle.loads(data)  # noqa: S301 - our own child's pickles
            elif kind == "done":
                self.cpu, self.peak_rss_kib = payload
                return
            else:
                reason, where = payload
                log.debug("replay: the log reader process failed:\n%s", where)
                raise ReaderError(f"the log reader process failed: {reason}")

    def _next(self) -> tuple[str, Any]:
        started = time.perf_counter()
        while True:
            try:
                message: tuple[str, Any] = self._queue.get(timeout=0.5)
                self.waited += time.perf_counter() - started
                return message
            except queue.Empty:
                if not self.process.is_alive():
                    raise ReaderError(
                        f"the log reader process (pid {self.process.pid}) died (exit code {self.process.exitcode})"
                    ) from None

    def close(self) -> None:
        """Stop the reader (if it is still going) and wait for it to end."""
        self._stop.set()
        if self.process.pid is None:  # never started
            self._spool.cleanup()
            return
        self.process.join(timeout=5)
        if self.process.is_alive():
            log.warning("replay: the log reader process did not stop; terminating it")
            self.process.terminate()
            self.process.join(timeout=5)
            if self.process.is_alive():
                self.process.kill()
                self.process.join()
        with contextlib.suppress(Exception):
            self._queue.close()
            self._queue.join_thread()
        self._spool.cleanup()
