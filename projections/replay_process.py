"""The log reader process of a long replay: it reads, checks, decodes and folds; the main process writes.

Reading the source, checking each row's link in the hash chain, decoding (validating) each event
and folding it into the view (:mod:`projections.replay_fold`) take most of a replay's CPU and need
nothing from the database but, rarely, an update let go earlier. A rebuild of many events does
them in a process of its own (:class:`ReaderProcess`, started with "spawn": the parent holds
SQLite connections, which a forked child must not inherit), which hands the parent each window
as view rows while the parent writes the previous one: two cores instead of one.

Each window goes as one pickle through a file in a spool directory, not through the queue's pipe:
a pipe takes 64 KiB at a time, and each piece waits for the sending thread to get the interpreter
lock back from the folding one. The parent tells the reader how many windows it has committed
through a shared counter (the reader waits on it only to read back an update let go earlier).
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
import tempfile
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from domain.db import make_engine
from projections.models import GENESIS_HASH
from projections.replay_fold import Committed, FoldedWindow, Folder, FoldFailed, known_updates, read_only_engine
from projections.replay_reader import CHUNK, LogReader, read_chunks, windows

log = logging.getLogger(__name__)

Message = FoldedWindow | FoldFailed | tuple[int, str]
"""What iterating a :class:`ReaderProcess` gives: a window, a window it could not fold, or the
(position, reason) of the first row that does not chain on (the last message of a broken log)."""


class ReaderError(Exception):
    """The reader process failed or died (the reason is fit to show the operator)."""


def _serve(source_url: str, target_url: str, position: int, prev_hash: str, end: int, window: int,
           first_window: int, chunk: int, spool: str, out: Any, stop: Any, committed: Any) -> None:
    """The reader process: send ("window", file of a pickled :class:`FoldedWindow`), ("failed",
    :class:`FoldFailed`) or ("broken", (position, reason)), then ("done", (CPU seconds, peak RSS in
    KiB)) or ("error", (reason, traceback))."""
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

    gc.disable()  # the decoded events and view rows form no cycles; the collector's passes cost ≈ 10 µs an event
    try:
        source, target = make_engine(source_url), read_only_engine(target_url)
        try:
            copy_log = not (source.dialect.name == "sqlite" and target.dialect.name == "sqlite")
            folder = Folder(target, Committed(lambda: committed.value, stop.is_set), copy_log=copy_log,
                            existing=known_updates(target) if position else set())
            with Session(source) as session:
                reader = LogReader(source.dialect, target.dialect.name)
                # the folder compares each row's columns with the envelope it decodes (a second parse is ≈ 8 µs)
                chunks = read_chunks(session, reader, end, position=position, prev_hash=prev_hash, chunk=chunk,
                                     columns=False)
                for number, rows in enumerate(windows(chunks, first_window, window)):
                    if not isinstance(rows, list):  # the row after the last window does not chain on
                        send(("broken", rows))
                        break
                    folded = folder.fold(rows, prev_hash)
                    if isinstance(folded, FoldFailed):  # the parent replays it; a new reader goes on after it
                        send(("failed", folded))
                        break
                    path = Path(spool) / f"window-{number:08d}.pickle"
                    path.write_bytes(pickle.dumps(folded, protocol=pickle.HIGHEST_PROTOCOL))
                    if not send(("window", str(path))):
                        return
                    prev_hash = folded.last_hash
        finally:
            source.dispose()
            target.dispose()
        send(("done", (time.process_time(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)))
    except InterruptedError:  # the parent stopped us while we waited for it
        return
    except BaseException as exc:  # whatever it is, the parent must hear of it
        send(("error", (f"{type(exc).__name__}: {exc}", traceback.format_exc())))


def _spool_parent() -> str | None:
    """Where the windows go: shared memory where there is some (they are written once, read once and
    deleted: no reason to reach a disk), else the temporary directory."""
    shm = Path("/dev/shm")  # noqa: S108 - a private directory is made in it
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK | os.X_OK) else None


class ReaderProcess:
    """Reads, checks, decodes and folds the log after ``position`` (whose hash is ``prev_hash``) up to
    ``end`` in a process of its own; use as a context manager (it is stopped on leaving).

    Iterating gives :data:`Message` s; call :meth:`committed` after writing each window (the reader
    waits for that before it reads back an update it let go after an earlier window). A reader
    that fails or dies raises :class:`ReaderError` (not a hang). ``cpu`` is the reader's CPU seconds
    and ``peak_rss_kib`` its peak resident memory once it has finished; ``waited``, the seconds the
    parent waited for it.
    """

    def __init__(self, source_url: str, target_url: str, end: int, *, position: int = 0,
                 prev_hash: str = GENESIS_HASH, window: int, first_window: int | None = None, chunk: int = CHUNK,
                 ahead: int = 2) -> None:
        context = multiprocessing.get_context("spawn")  # not fork: the parent holds SQLite connections
        self._queue: Any = context.Queue(maxsize=ahead)  # windows folded ahead of the parent: bounds the spool
        self._stop = context.Event()
        self._committed: Any = context.Value("q", 0, lock=False)  # one writer (the parent), one reader
        self._spool = tempfile.TemporaryDirectory(prefix="hotupdate-replay-", dir=_spool_parent())
        self.process = context.Process(
            target=_serve,
            args=(source_url, target_url, position, prev_hash, end, window, first_window or window, chunk,
                  self._spool.name, self._queue, self._stop, self._committed),
            name="hotupdate-replay-reader", daemon=True,
        )
        self.cpu, self.peak_rss_kib = 0.0, 0
        self.waited = 0.0  # seconds the parent waited for a window

    def __enter__(self) -> ReaderProcess:
        self.process.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def committed(self, windows: int) -> None:
        """Tell the reader the parent has committed that many of its windows."""
        self._committed.value = windows

    def __iter__(self) -> Iterator[Message]:
        while True:
            kind, payload = self._next()
            if kind == "window":
                path = Path(payload)
                data = path.read_bytes()
                path.unlink()
                yield pickle.loads(data)  # noqa: S301 - our own child's pickles
            elif kind in ("failed", "broken"):
                yield payload
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
