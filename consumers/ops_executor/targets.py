"""One update's targets, batch by batch: run (each reported as it finishes) or reported again from the record.

hot_server targets are IPs (one *IP finished* per group and IP), hot_client targets CDN dirs (one
*CDN dir finished* each); both are cut into the batches of the request's rollout plan.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from bus.contract.events import BatchFinished, CdnDirFinished, CdnTarget, Event, ServerResult, UpdateRequested
from bus.handling import Emitter
from bus.metrics import record_result
from consumers.ops_executor.hot_client import CdnJob, CdnUpdater
from consumers.ops_executor.hot_server import (
    IpUnit,
    ServerJob,
    ServerUpdater,
    failures,
    ip_finished,
    ip_units,
    ips_of,
    unit_batches,
    was_aborted,
)
from consumers.ops_executor.records import BatchRecord, CdnKey, ServerKey, ServerOutcome
from consumers.ops_executor.rollout import plan_batches
from consumers.ops_executor.state import StateStore


class Serialized:
    """An emitter used by concurrent IP tasks: one publish at a time, in the order they finish.

    ``count`` is the number of events published for the update so far (from ``base``, those
    published before a wait); while ``muted``, events already published are not sent again.
    """

    def __init__(self, emit: Emitter, base: int = 0) -> None:
        self._emit = emit
        self._lock = asyncio.Lock()
        self.count = base
        self.muted = False
        self._began = time.monotonic()  # the update's duration, as this executor saw it run

    async def emit(self, event: Event, *, key: str = "") -> None:
        if self.muted:
            return
        async with self._lock:
            await self._emit.emit(event, key=key)
            self.count += 1
            record_result(event, self._began)  # every result the executor reports passes here


@dataclass
class Ran:
    """What the targets that ran (in one batch, or all so far) came to."""

    total: int = 0  # game servers (hot_server) or CDN dirs (hot_client) with a result
    failed: list[str] = field(default_factory=list)
    not_started: list[str] = field(default_factory=list)
    aborted: int = 0  # servers of a started IP kept from starting by an abort
    data: list[dict[str, Any]] = field(default_factory=list)  # hot_client: the seed's per-dir list

    def add(self, other: Ran) -> None:
        self.total += other.total
        self.failed += other.failed
        self.not_started += other.not_started
        self.aborted += other.aborted
        self.data += other.data


class Targets(Protocol):
    """One kind of update's targets, cut into batches."""

    def batch_count(self) -> int: ...

    def keys(self, number: int) -> list[str]:
        """How batch ``number``'s targets are named in ``not_run``."""
        ...

    def finished(self, record: BatchRecord) -> BatchFinished: ...

    async def run(self, number: int, *, may_start: bool, halt: asyncio.Event, out: Serialized) -> Ran:
        """Run the batch's targets without a recorded result (unless not ``may_start``); report each."""
        ...

    async def report_recorded(self, number: int, out: Serialized) -> list[dict[str, Any]]:
        """Report the batch's recorded results again; nothing runs."""
        ...


def halted() -> asyncio.Event:
    """An event already set: a batch run with it starts nothing."""
    event = asyncio.Event()
    event.set()
    return event


class ServerTargets:
    """hot_server: batches of IPs; one *IP finished* per (group, IP)."""

    def __init__(self, store: StateStore, uid: str, event: UpdateRequested,
                 updater: ServerUpdater | None = None, job: ServerJob | None = None) -> None:
        self._store, self._uid, self._version = store, uid, event.version
        self._updater, self._job = updater, job
        self._batches = unit_batches(ip_units(event.update_server_list or {}), event.rollout)

    def batch_count(self) -> int:
        return len(self._batches)

    def keys(self, number: int) -> list[str]:
        return [u.key for u in self._batches[number - 1]]

    def finished(self, record: BatchRecord) -> BatchFinished:
        return BatchFinished(batch=record.batch, batches=len(self._batches),
                             ips=ips_of(self._batches[record.batch - 1]), ok_count=record.ok_count,
                             failed_count=record.failed_count, next=record.next)

    async def run(self, number: int, *, may_start: bool, halt: asyncio.Event, out: Serialized) -> Ran:
        assert self._updater is not None and self._job is not None, "built to report recorded results only"
        updater, job = self._updater, self._job
        batch = self._batches[number - 1]
        done = await self._store.server_results(self._uid)
        started = await self._store.started_servers(self._uid) - done.keys()
        stop = halt if may_start else halted()
        results: dict[ServerKey, ServerOutcome] = {}
        not_started: set[str] = set()

        async def record(key: ServerKey, outcome: ServerOutcome) -> None:
            await self._store.record_server(self._uid, key, outcome)

        async def mark_started(key: ServerKey) -> None:
            await self._store.start_server(self._uid, key)

        async def one_ip(unit: IpUnit) -> None:
            by_server = await updater.run_ip(job, unit, done, record, stop, started=started,
                                             mark_started=mark_started)
            if by_server is None:
                not_started.add(unit.key)
                return
            results.update({(unit.group, unit.ip, s): o for s, o in by_server.items()})
            await out.emit(ip_finished(self._version, unit, by_server), key=unit.key)

        async with asyncio.TaskGroup() as group:
            for unit in batch:
                group.create_task(one_ip(unit))
        ran = [u for u in batch if u.key not in not_started]
        return Ran(total=len(results), failed=failures(ran, results),
                    not_started=[u.key for u in batch if u.key in not_started],
                    aborted=sum(was_aborted(o) for o in results.values()))

    async def report_recorded(self, number: int, out: Serialized) -> list[dict[str, Any]]:
        results = await self._store.server_results(self._uid)
        for unit in self._batches[number - 1]:
            if all((unit.group, unit.ip, s) in results for s in unit.servers):
                by_server = {s: results[(unit.group, unit.ip, s)] for s in unit.servers}
                await out.emit(ip_finished(self._version, unit, by_server), key=unit.key)
        return []


class CdnTargets:
    """hot_client: batches of CDN dirs; one *CDN dir finished* per dir."""

    def __init__(self, store: StateStore, uid: str, event: UpdateRequested,
                 updater: CdnUpdater | None = None, job: CdnJob | None = None) -> None:
        self._store, self._uid, self._version = store, uid, event.version
        self._updater, self._job = updater, job
        self._batches = plan_batches(unique_targets(event.data or []), event.rollout)

    def batch_count(self) -> int:
        return len(self._batches)

    def keys(self, number: int) -> list[str]:
        return [f"{t.cdn_root_url}/{t.cdn_dir}" for t in self._batches[number - 1]]

    def finished(self, record: BatchRecord) -> BatchFinished:
        return BatchFinished(batch=record.batch, batches=len(self._batches),
                             cdn_dirs=self._batches[record.batch - 1], ok_count=record.ok_count,
                             failed_count=record.failed_count, next=record.next)

    async def run(self, number: int, *, may_start: bool, halt: asyncio.Event, out: Serialized) -> Ran:
        assert self._updater is not None and self._job is not None, "built to report recorded results only"
        updater, job = self._updater, self._job
        batch = self._batches[number - 1]
        done = await self._store.cdn_results(self._uid)
        stop = halt if may_start else halted()
        results: dict[CdnKey, ServerResult] = {}

        async def one_dir(target: CdnTarget) -> None:
            key = (target.cdn_root_url, target.cdn_dir)
            result = done.get(key)
            if result is None:
                result = await updater.run_dir(job, *key, halt=stop)
                if result is None:
                    return
                await self._store.record_cdn(self._uid, key, result)
            results[key] = result
            await out.emit(cdn_dir_finished(self._version, target, result), key="/".join(key))

        async with asyncio.TaskGroup() as group:
            for target in batch:
                group.create_task(one_dir(target))
        ran = [t for t in batch if (t.cdn_root_url, t.cdn_dir) in results]
        return Ran(total=len(results),
                    failed=[f"{u}/{d}" for (u, d), r in results.items() if not r.status],
                    not_started=[f"{t.cdn_root_url}/{t.cdn_dir}" for t in batch if t not in ran],
                    data=cdn_data(ran, results))

    async def report_recorded(self, number: int, out: Serialized) -> list[dict[str, Any]]:
        results = await self._store.cdn_results(self._uid)
        ran = [t for t in self._batches[number - 1] if (t.cdn_root_url, t.cdn_dir) in results]
        for target in ran:
            key = (target.cdn_root_url, target.cdn_dir)
            await out.emit(cdn_dir_finished(self._version, target, results[key]), key="/".join(key))
        return cdn_data(ran, results)


def unique_targets(targets: Iterable[CdnTarget]) -> list[CdnTarget]:
    """CDN targets in request order, each once."""
    seen: dict[tuple[str, str], CdnTarget] = {}
    for target in targets:
        seen.setdefault((target.cdn_root_url, target.cdn_dir), target)
    return list(seen.values())


def cdn_dir_finished(version: str, target: CdnTarget, result: ServerResult) -> CdnDirFinished:
    return CdnDirFinished(version=version, cdn_root_url=target.cdn_root_url, cdn_dir=target.cdn_dir,
                          status=result.status, data=result.data)


def cdn_data(targets: list[CdnTarget], results: dict[tuple[str, str], ServerResult]) -> list[dict[str, Any]]:
    """The seed's hot_client answer: each CDN dir with its status."""
    return [
        {"cdn_root_url": t.cdn_root_url, "cdn_dir": t.cdn_dir, "status": results[(t.cdn_root_url, t.cdn_dir)].status}
        for t in targets
    ]
