"""The projection's database work in a process of its own, fed batches of envelope bytes over a pipe.

Why a process: the consumer runtime (parse, validate, dispatch, ack) and the ingest
(:func:`projections.ingest.batch.ingest_batch`) are both CPU-bound Python; in one process the GIL
runs them on one core in turn, and hands it back and forth between the event loop and an
ingest thread. Here the worker ingests batch N while the event loop takes in batch N+1.

The worker is started explicitly (``python -m projections.ingest.worker``, not
multiprocessing: its spawn start re-imports the caller's main module) with pipes for stdin
and stdout. Frames are a 4-byte big-endian length and a payload:

- first request: JSON ``{"database_url": ..., "parent": pid}`` (the URL stays off the
  command line); reply ``{"ready": true}`` once the engine is made;
- then each request is a batch: a 4-byte count, then per envelope a 4-byte length and the
  bytes, followed by a 4-byte length and the UTF-8 broker-verified publisher of its delivery
  (``Incoming.publisher``: the worker logs it, covered by the hash chain); the reply is JSON:
  ``{"outcomes": [[event_id, status, position, error], ...]}``,
  or ``{"error": ...}`` if a transaction failed as a whole (see :func:`projections.ingest.batch.ingest_batch`).

A reply is written only after the batch committed, and the service acks a message only
after the reply: nothing acked is uncommitted. If the service dies (even by kill -9), the
worker is killed by the kernel (``PR_SET_PDEATHSIG``) or ends at the end of its stdin, so a
half-done transaction is rolled back and its messages are redelivered to the next service.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import signal
import struct
import sys
from collections import deque
from collections.abc import Sequence
from typing import IO, Any

from bus.contract.envelope import Envelope, EnvelopeError
from bus.contract.events import Event
from bus.contract.registry import DEFAULT_REGISTRY
from projections.ingest.batch import ConflictingDuplicate, Outcome, OutcomeStatus, ingest_batch

log = logging.getLogger(__name__)

_LENGTH = struct.Struct(">I")
_PR_SET_PDEATHSIG = 1
_STOP_TIMEOUT = 30.0  # a batch in flight finishes its transaction before the worker reads EOF


class IngestWorkerError(Exception):
    """An ingest failure reported by the worker (the original exception's type and message), or its death."""


def encode_batch(bodies: Sequence[bytes], publishers: Sequence[str] | None = None) -> bytes:
    """One batch request: each body with its delivery's verified publisher ("" where not given)."""
    who = publishers if publishers is not None else [""] * len(bodies)
    if len(who) != len(bodies):
        raise ValueError(f"{len(who)} publishers for {len(bodies)} bodies")
    parts = [_LENGTH.pack(len(bodies))]
    for body, publisher in zip(bodies, who, strict=True):
        user = publisher.encode("utf-8")
        parts += [_LENGTH.pack(len(body)), body, _LENGTH.pack(len(user)), user]
    return b"".join(parts)


def decode_batch(payload: bytes) -> tuple[list[bytes], list[str]]:
    """The bodies of a batch request and their publishers (:func:`encode_batch`)."""
    chunks: list[bytes] = []
    offset = _LENGTH.size
    for _ in range(2 * _LENGTH.unpack_from(payload, 0)[0]):  # a body, its publisher, the next body, ...
        (size,) = _LENGTH.unpack_from(payload, offset)
        offset += _LENGTH.size + size
        chunks.append(payload[offset - size:offset])
    return chunks[0::2], [user.decode("utf-8", errors="replace") for user in chunks[1::2]]


def _frame(payload: bytes) -> bytes:
    return _LENGTH.pack(len(payload)) + payload


def _outcome_row(outcome: Outcome) -> list[Any]:
    error = outcome.error
    detail = None if error is None else f"{type(error).__name__}: {error}"
    return [outcome.event_id, outcome.status, outcome.position, detail]


_CONFLICT = f"{ConflictingDuplicate.__name__}: "


def _outcome(row: list[Any]) -> Outcome:
    event_id, status, position, detail = row
    status_: OutcomeStatus = status
    if detail is None:
        return Outcome(event_id, status_, position)
    # A conflict stays one across the pipe: the runtime parks it at once as "conflict: …", no retries.
    error: Exception = (ConflictingDuplicate(detail[len(_CONFLICT):]) if detail.startswith(_CONFLICT)
                        else IngestWorkerError(detail))
    return Outcome(event_id, status_, position, error)


class IngestWorker:
    """The service's side: starts the worker process and sends it batches.

    Up to two batches may be outstanding: the worker takes them in order from its pipe, so the
    next one is there as soon as it has committed one, instead of waiting for the service to
    ack that one and gather another. Replies come back in the same order.
    """

    def __init__(self, database_url: str) -> None:
        self._database_url = database_url
        self._proc: asyncio.subprocess.Process | None = None
        self._starting = asyncio.Lock()
        self._replies: deque[asyncio.Future[dict[str, Any]]] = deque()
        self._reader: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    async def start(self) -> None:
        """Start the worker (if it is not running) and wait until it has its database engine."""
        async with self._starting:
            if self._proc is not None and self._proc.returncode is None:
                return
            # An argument list, and the interpreter running the service, so the same installed code runs.
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "projections.ingest.worker",
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            )
            self._proc = proc
            self._reader = asyncio.get_running_loop().create_task(self._read_replies(proc), name="ingest-replies")
            config = {"database_url": self._database_url, "parent": os.getpid()}
            reply = await self._request(proc, json.dumps(config).encode())
            if not reply.get("ready"):
                raise IngestWorkerError(f"ingest worker did not start: {reply}")
            log.info("projection: ingest worker %d started", proc.pid)

    async def ingest(self, bodies: Sequence[bytes], publishers: Sequence[str] | None = None) -> list[Outcome]:
        """Ingest one batch in the worker; one outcome per body; raises if the transaction failed.

        ``publishers``: each delivery's broker-verified user, logged with it ("" for each if not given).
        """
        try:
            await self.start()
            assert self._proc is not None
            reply = await self._request(self._proc, encode_batch(bodies, publishers))
        except (OSError, asyncio.IncompleteReadError, IngestWorkerError) as exc:
            # The worker died (its transaction, if any, was rolled back): a new one starts for the next batch.
            await self._kill()
            raise IngestWorkerError(f"ingest worker failed: {exc!r}") from exc
        if "error" in reply:
            raise IngestWorkerError(reply["error"])
        outcomes = [_outcome(row) for row in reply["outcomes"]]
        if len(outcomes) != len(bodies):
            raise IngestWorkerError(f"{len(outcomes)} outcomes for {len(bodies)} events")
        return outcomes

    async def close(self) -> None:
        """Let the worker finish what it was sent and exit (end of its stdin); kill it if it does not."""
        proc = self._proc
        if proc is None:
            return
        if proc.returncode is None and proc.stdin is not None:
            proc.stdin.close()
            try:
                await asyncio.wait_for(proc.wait(), _STOP_TIMEOUT)
            except TimeoutError:
                log.warning("projection: ingest worker %d did not exit; killing it", proc.pid)
        await self._kill()

    async def _request(self, proc: asyncio.subprocess.Process, payload: bytes) -> dict[str, Any]:
        if proc.stdin is None or proc.returncode is not None or self._reader is None or self._reader.done():
            raise IngestWorkerError("ingest worker is not running")
        reply: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._replies.append(reply)  # in the order written: the worker answers in that order
        proc.stdin.write(_frame(payload))
        await proc.stdin.drain()
        return await reply

    async def _read_replies(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        try:
            while True:
                (size,) = _LENGTH.unpack(await proc.stdout.readexactly(_LENGTH.size))
                reply = json.loads(await proc.stdout.readexactly(size))
                if self._replies:
                    waiter = self._replies.popleft()
                    if not waiter.done():
                        waiter.set_result(reply)
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            self._fail_waiting(IngestWorkerError(f"ingest worker ended: {exc!r}"))

    def _fail_waiting(self, exc: Exception) -> None:
        while self._replies:
            waiter = self._replies.popleft()
            if not waiter.done():
                waiter.set_exception(exc)

    async def _kill(self) -> None:
        proc, self._proc = self._proc, None
        reader, self._reader = self._reader, None
        if proc is not None and proc.returncode is None:
            proc.kill()
            await proc.wait()
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        self._fail_waiting(IngestWorkerError("ingest worker stopped"))


# --- the worker process ------------------------------------------------------------------


def _die_with_parent(parent: int) -> None:
    """Have the kernel kill this process when the service does (Linux); else rely on stdin's EOF."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError) as exc:
            log.warning("ingest worker: PR_SET_PDEATHSIG unavailable: %r", exc)
    if os.getppid() != parent:  # the service died before the line above took effect
        os._exit(1)


def _read_frame(stream: IO[bytes]) -> bytes | None:
    header = stream.read(_LENGTH.size)
    if len(header) < _LENGTH.size:
        return None
    (size,) = _LENGTH.unpack(header)
    payload = stream.read(size)
    if len(payload) < size:
        return None
    return payload


def _ingest_bodies(engine: Any, bodies: list[bytes], publishers: list[str]) -> dict[str, Any]:
    items: list[tuple[Envelope, Event]] = []
    item_publishers: list[str] = []
    undecodable: dict[int, Exception] = {}
    for index, body in enumerate(bodies):
        # The service validated these already; decoding the same bytes the same way gives the same objects.
        try:
            envelope = Envelope.from_bytes(body)
            items.append((envelope, DEFAULT_REGISTRY.decode(envelope)))
            item_publishers.append(publishers[index])
        except EnvelopeError as exc:
            undecodable[index] = exc
    try:
        outcomes = iter(ingest_batch(engine, items, publishers=item_publishers))
    except Exception as exc:  # a transaction failed as a whole: the service retries the whole batch
        log.warning("ingest worker: batch of %d failed: %r", len(items), exc)
        return {"error": f"{type(exc).__name__}: {exc}"}
    rows = []
    for index in range(len(bodies)):
        if index in undecodable:
            rows.append(["?", "failed", None, f"EnvelopeError: {undecodable[index]}"])
        else:
            rows.append(_outcome_row(next(outcomes)))
    return {"outcomes": rows}


def main() -> int:
    from domain.db import make_engine

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s ingest-worker %(name)s: %(message)s")
    # A Ctrl-C or a SIGTERM to the whole process group reaches the service too, which finishes the
    # batch in flight and then closes our stdin: stop in that order, not mid-transaction.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    requests, replies = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing but replies on the reply pipe
    first = _read_frame(requests)
    if first is None:
        return 1
    config = json.loads(first)
    _die_with_parent(int(config["parent"]))
    engine = make_engine(str(config["database_url"]))
    replies.write(_frame(b'{"ready": true}'))
    replies.flush()
    try:
        while (payload := _read_frame(requests)) is not None:
            reply = _ingest_bodies(engine, *decode_batch(payload))
            replies.write(_frame(json.dumps(reply).encode()))
            replies.flush()
    except BrokenPipeError:  # the service is gone; what we committed is redelivered and found logged
        return 1
    finally:
        engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
