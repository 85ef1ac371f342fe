"""The reader process of a long rebuild: it reads, walks, decodes and folds; the main process writes.

Reading the source, walking its hash chain, decoding each event and folding it
(:func:`projections.rebuild.window.fold_window`) take about half of a rebuild's CPU and need
nothing from the target but, rarely, an update let go earlier; writing takes the other half. A
long rebuild does the first half in a process of its own (:class:`ReaderProcess`, started with
"spawn": the parent holds database connections a forked child must not inherit), which hands
the parent each window folded (:class:`projections.rebuild.window.Folded`: plain tuples) while
the parent writes the one before: two cores instead of one (BENCHMARKS.md §4a).

Each window goes as one pickle through a file in a spool directory (shared memory where there is
some), not through the queue's pipe: a pipe takes 64 KiB at a time, each piece waiting for the
sending thread to get the interpreter lock back from the folding one. The queue holds at most
``ahead`` windows, which bounds the spool. An update the reader let go (it was completed) and
meets again is read back from the target once the parent has committed every window sent;
whether the target may hold it at all, the source's log says (an earlier event of that update),
so the reader keeps no set of the updates it has seen: its memory is bounded by the window.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import multiprocessing
import os
import pickle
import queue
import resource
import signal
import sqlite3
import tempfile
import time
import traceback
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy import Engine, create_engine, select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from domain.db import make_engine
from projections import log as event_log
from projections import view
from projections.log import AT, Chain
from projections.models import LoggedEvent
from projections.rebuild.window import Broken, Folded, Load, fold_window, windows

log = logging.getLogger(__name__)

_POSITION = AT["position"]
_IN_CHUNK = 500  # ids per IN (...) list: well under every database's bound-parameter limit


@dataclass
class FoldFailed:
    """A reducer raised in this window (``rows``): the parent replays it itself, narrowing it down."""

    rows: list[tuple[Any, ...]]
    reason: str


Message = Folded | FoldFailed | Broken
"""What iterating a :class:`ReaderProcess` gives: a window folded, a window it could not fold (its last
message), or where the source is broken (its last message, after the windows before it)."""


class ReaderError(Exception):
    """The reader process failed or died (the reason is fit to show the operator)."""


def read_only_engine(url: str) -> Engine:
    """An engine that reads the target as the parent builds it, without touching its settings (an ordinary
    SQLite connection would switch its journal back to the write-ahead log)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return make_engine(url)
    uri = f"file:{quote(parsed.database)}?mode=ro"
    return create_engine("sqlite://", creator=lambda: sqlite3.connect(uri, uri=True, timeout=60))


class _Folder:
    """The reader's side: its rows in memory and how it reads back an update it let go."""

    def __init__(self, source: Session, target: Engine, committed: Any, stop: Any) -> None:
        self.source, self.target, self.committed, self.stop = source, target, committed, stop
        self.memory = view.MemoryRows()
        self.sent = 0

    def loader(self, first: int) -> Load:
        """How the window from position ``first`` holds its updates (:meth:`load`)."""

        def load(memory: view.MemoryRows, updateids: Iterable[str]) -> None:
            self.load(memory, updateids, first)

        return load

    def load(self, memory: view.MemoryRows, updateids: Iterable[str], first: int) -> None:
        """Hold the window's updates: new if the source logged none of their events before ``first``;
        else read back from the target, once the parent has written every window sent."""
        wanted = [u for u in updateids if u not in memory.updates]
        seen: set[str] = set()
        table: Any = LoggedEvent.__table__
        for start in range(0, len(wanted), _IN_CHUNK):
            chunk = wanted[start:start + _IN_CHUNK]
            seen.update(self.source.execute(
                select(table.c.updateid).distinct().where(table.c.updateid.in_(chunk), table.c.position < first)
            ).scalars())
        for updateid in wanted:
            if updateid not in seen:
                memory.new_update(updateid)
        if not seen:
            return
        while self.committed.value < self.sent:
            if self.stop.is_set():
                raise InterruptedError("the rebuild stopped")
            time.sleep(0.002)
        with self.target.connect() as connection:
            view.load(connection, memory, seen)


def _serve(source_url: str, target_url: str, after: int, prev_hash: str, end: int, size: int, send_rows: bool,
           spool: str, out: Any, stop: Any, committed: Any) -> None:
    """The reader process: send ("window", file of a pickled :class:`Folded`) for each window, then ("failed",
    (:class:`FoldFailed`, peak RSS)), ("broken", (position, reason, peak RSS)) or ("done", peak RSS), peak RSS
    in KiB; or ("error", (reason, traceback))."""
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

    gc.disable()  # what a window holds forms no cycles; the collector's passes would cost as much as decoding
    try:
        source, target = make_engine(source_url), read_only_engine(target_url)
        stored = source.dialect.name == target.dialect.name == "sqlite"
        try:
            with Session(source) as session:
                folder = _Folder(session, target, committed, stop)
                rows = event_log.read_rows(session, after=after, up_to=end, stored=stored)
                try:
                    for number, window in enumerate(windows(rows, Chain(after, prev_hash), size, end)):
                        try:
                            folded = fold_window(folder.memory, window, folder.loader(window[0][_POSITION]))
                        except (view.ReducerFailed, Broken) as failed:  # the parent narrows it down to the event
                            send(("failed", (FoldFailed(window, f"{type(failed).__name__}: {failed}"), _peak())))
                            return
                        if not send_rows:  # the parent copies them from the source by SQL
                            folded.rows = None
                        path = Path(spool) / f"window-{number:08d}.pickle"
                        path.write_bytes(pickle.dumps(folded, protocol=pickle.HIGHEST_PROTOCOL))
                        if not send(("window", str(path))):
                            return
                        folder.sent += 1
                except Broken as broken:
                    send(("broken", (broken.position, broken.reason, _peak())))
                    return
        finally:
            source.dispose()
            target.dispose()
        send(("done", _peak()))
    except InterruptedError:  # the parent stopped us while we waited for it
        return
    except BaseException as exc:  # whatever it is, the parent must hear of it
        send(("error", (f"{type(exc).__name__}: {exc}", traceback.format_exc())))


def _peak() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _spool_parent() -> str | None:
    """Where the windows go: shared memory where there is some (written once, read once and deleted: no
    reason to reach a disk), else the temporary directory."""
    shm = Path("/dev/shm")  # noqa: S108 - a private directory is made in it
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK | os.X_OK) else None


class ReaderProcess:
    """Reads, walks, decodes and folds the source's log after ``after`` (whose hash is ``prev_hash``) up to
    ``end``, in windows of ``size``, in a process of its own; use as a context manager (stopped on leaving).
    ``send_rows`` False: the windows come without their log rows (the parent copies them by SQL).

    Iterating gives :data:`Message` s; call :meth:`committed` after writing each window. A reader that
    fails or dies raises :class:`ReaderError` (not a hang). ``peak_rss_kib``: the reader's peak resident
    memory, once it has finished; ``waited``: the seconds the parent waited for it.
    """

    def __init__(self, source_url: str, target_url: str, *, after: int, prev_hash: str, end: int, size: int,
                 send_rows: bool = True, ahead: int = 2) -> None:
        context = multiprocessing.get_context("spawn")  # not fork: the parent holds database connections
        self._queue: Any = context.Queue(maxsize=ahead)  # windows folded ahead of the parent: bounds the spool
        self._stop = context.Event()
        self._committed: Any = context.Value("q", 0, lock=False)  # one writer (the parent), one reader
        self._spool = tempfile.TemporaryDirectory(prefix="hotupdate-rebuild-", dir=_spool_parent())
        self.process = context.Process(
            target=_serve,
            args=(source_url, target_url, after, prev_hash, end, size, send_rows, self._spool.name, self._queue,
                  self._stop, self._committed),
            name="hotupdate-rebuild-reader", daemon=True,
        )
        self.windows = 0
        self.peak_rss_kib = 0
        self.waited = 0.0

    def __enter__(self) -> ReaderProcess:
        self.process.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def committed(self) -> None:
        """Tell the reader the parent has committed one more of its windows."""
        self.windows += 1
        self._committed.value = self.windows

    def __iter__(self) -> Iterator[Message]:
        while True:
            kind, payload = self._next()
            if kind == "window":
                path = Path(payload)
                data = path.read_bytes()
                path.unlink()
                yield pickle.loads(data)  # noqa: S301 - our own child's pickles
            elif kind == "failed":
                failed, self.peak_rss_kib = payload
                yield failed
                return
            elif kind == "broken":
                position, reason, self.peak_rss_kib = payload
                yield Broken(position, reason)
                return
            elif kind == "done":
                self.peak_rss_kib = payload
                return
            else:
                reason, where = payload
                log.debug("rebuild: the reader process failed:\n%s", where)
                raise ReaderError(f"the rebuild's reader process failed: {reason}")

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
                        f"the rebuild's reader process (pid {self.process.pid}) died (exit code "
                        f"{self.process.exitcode})") from None

    def close(self) -> None:
        """Stop the reader (if it is still going) and wait for it to end."""
        self._stop.set()
        if self.process.pid is not None:
            self.process.join(timeout=5)
            if self.process.is_alive():
                log.warning("rebuild: the reader process did not stop; terminating it")
                self.process.terminate()
                self.process.join(timeout=5)
                if self.process.is_alive():
                    self.process.kill()
                    self.process.join()
            with contextlib.suppress(Exception):
                self._queue.close()
                self._queue.join_thread()
        self._spool.cleanup()
