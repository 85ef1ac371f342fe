"""Running an *update requested* exactly once per update id, whatever the broker redelivers.

- A new update is claimed in the state store, run, and reported: *update started* at once,
  *IP finished* / *CDN dir finished* per target as it finishes, *update completed* last.
- Rollout: the targets (IPs, or CDN dirs) run in the batches of the request's plan (see
  :mod:`consumers.ops_executor.rollout`; no plan: one batch), each followed by *batch finished*
  when there is a plan. The next batch starts ``pause_seconds`` after the previous one
  finished. After a failed batch, ``stop`` ends the update (the rest is reported in
  ``not_run``), ``continue`` goes on, ``confirm`` records that the update waits and returns:
  the request is acked and nothing is held. A *batch confirmed* for that batch carries on
  from the record (:meth:`Executor.confirm`), in this process or the next.
- Abort (:meth:`Executor.abort`): recorded, and the update's run is told at once; servers and
  CDN dirs already started finish, nothing new starts, and the update completes "aborted"
  with what never started in ``not_run``. An abort of a waiting update completes it at once;
  one that arrives before its request makes the request complete without running anything.
- A request for an update already finished (or failed: refused, unrecoverable) is answered from the record:
  the same events again, with the same ids when the request is the same message. One for an
  update waiting for a go-ahead is answered likewise and goes on waiting.
- A request for an update this process is running waits for that run, then answers from it.
- An update found unfinished (its executor was stopped or crashed) is resumed: targets with
  a recorded result keep it and are not run again, the others run. After ``max_attempts``
  takeovers the rest is failed explicitly ("放弃执行"), so nothing stays "running" forever.
- On shutdown running updates are cancelled (their commands killed), marked "interrupted",
  and their handlers raise :class:`UpdateInterrupted` so the broker delivers them again later.

Every event of an update is a child of its *update requested* envelope, whichever path emits
it (first run, redelivery, resume, carrying on after a go-ahead), so a repeated event keeps
its id; events after a go-ahead continue the sequence numbers of those before the wait.

One executor process per ops manager: two processes sharing a state database would each
take the other's running update for an interrupted one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol

from pydantic import TypeAdapter, ValidationError

from bus.envelope import Envelope
from bus.events import (
    BatchFinished,
    CdnDirFinished,
    CdnTarget,
    Event,
    RolloutPlan,
    ServerResult,
    UpdateCompleted,
    UpdateRequested,
    UpdateStarted,
)
from bus.handling import Emitter
from bus.metrics import record_result
from bus.registry import DEFAULT_REGISTRY
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
from consumers.ops_executor.incoming import verify_incoming
from consumers.ops_executor.rollout import (
    completion_text,
    next_step,
    outcome_of,
    plan_batches,
    summary,
)
from consumers.ops_executor.runner import HostRunner, make_runner
from consumers.ops_executor.state import (
    BatchRecord,
    CdnKey,
    ServerKey,
    ServerOutcome,
    StateStore,
    UpdateRecord,
)
from consumers.ops_executor.templates import ServerTemplates, check_purge_template
from domain.allowed import Refusal, describe, update_refusals
from domain.config import OpsManagerConfig, ProjectConfig
from domain.erlang_cookie import ErlangHomes
from domain.layout import LayoutError, incoming_dir, update_path
from domain.types import CdnDir, HostName, IpAddress, RelativeFileName, ServerName

log = logging.getLogger(__name__)

__all__ = ["EmitterFor", "Executor", "UpdateInterrupted", "refusal", "summary"]

EmitterFor = Callable[[Envelope], Emitter]
Gate = Literal["go", "wait", "stopped", "aborted"]


class UpdateInterrupted(RuntimeError):
    """The executor is stopping: the update is recorded as interrupted and will be resumed."""


class _Serialized:
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
class _Ran:
    """What the targets that ran (in one batch, or all so far) came to."""

    total: int = 0  # game servers (hot_server) or CDN dirs (hot_client) with a result
    failed: list[str] = field(default_factory=list)
    not_started: list[str] = field(default_factory=list)
    aborted: int = 0  # servers of a started IP kept from starting by an abort
    data: list[dict[str, Any]] = field(default_factory=list)  # hot_client: the seed's per-dir list

    def add(self, other: _Ran) -> None:
        self.total += other.total
        self.failed += other.failed
        self.not_started += other.not_started
        self.aborted += other.aborted
        self.data += other.data


class _Targets(Protocol):
    """One kind of update's targets, cut into batches."""

    def batch_count(self) -> int: ...

    def keys(self, number: int) -> list[str]:
        """How batch ``number``'s targets are named in ``not_run``."""
        ...

    def finished(self, record: BatchRecord) -> BatchFinished: ...

    async def run(self, number: int, *, may_start: bool, halt: asyncio.Event, out: _Serialized) -> _Ran:
        """Run the batch's targets without a recorded result (unless not ``may_start``); report each."""
        ...

    async def replay(self, number: int, out: _Serialized) -> list[dict[str, Any]]:
        """Report the batch's recorded results again; nothing runs."""
        ...


def _halted() -> asyncio.Event:
    event = asyncio.Event()
    event.set()
    return event


class _ServerTargets:
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

    async def run(self, number: int, *, may_start: bool, halt: asyncio.Event, out: _Serialized) -> _Ran:
        assert self._updater is not None and self._job is not None, "built for replaying only"
        updater, job = self._updater, self._job
        batch = self._batches[number - 1]
        done = await self._store.aserver_results(self._uid)
        started = await self._store.astarted_servers(self._uid) - done.keys()
        stop = halt if may_start else _halted()
        results: dict[ServerKey, ServerOutcome] = {}
        not_started: set[str] = set()

        async def record(key: ServerKey, outcome: ServerOutcome) -> None:
            await self._store.arecord_server(self._uid, key, outcome)

        async def mark_started(key: ServerKey) -> None:
            await self._store.astart_server(self._uid, key)

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
        return _Ran(total=len(results), failed=failures(ran, results),
                    not_started=[u.key for u in batch if u.key in not_started],
                    aborted=sum(was_aborted(o) for o in results.values()))

    async def replay(self, number: int, out: _Serialized) -> list[dict[str, Any]]:
        results = await self._store.aserver_results(self._uid)
        for unit in self._batches[number - 1]:
            if all((unit.group, unit.ip, s) in results for s in unit.servers):
                by_server = {s: results[(unit.group, unit.ip, s)] for s in unit.servers}
                await out.emit(ip_finished(self._version, unit, by_server), key=unit.key)
        return []


class _CdnTargets:
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

    async def run(self, number: int, *, may_start: bool, halt: asyncio.Event, out: _Serialized) -> _Ran:
        assert self._updater is not None and self._job is not None, "built for replaying only"
        updater, job = self._updater, self._job
        batch = self._batches[number - 1]
        done = await self._store.acdn_results(self._uid)
        stop = halt if may_start else _halted()
        results: dict[CdnKey, ServerResult] = {}

        async def one_dir(target: CdnTarget) -> None:
            key = (target.cdn_root_url, target.cdn_dir)
            result = done.get(key)
            if result is None:
                result = await updater.run_dir(job, *key, halt=stop)
                if result is None:
                    return
                await self._store.arecord_cdn(self._uid, key, result)
            results[key] = result
            await out.emit(cdn_dir_finished(self._version, target, result), key="/".join(key))

        async with asyncio.TaskGroup() as group:
            for target in batch:
                group.create_task(one_dir(target))
        ran = [t for t in batch if (t.cdn_root_url, t.cdn_dir) in results]
        return _Ran(total=len(results),
                    failed=[f"{u}/{d}" for (u, d), r in results.items() if not r.status],
                    not_started=[f"{t.cdn_root_url}/{t.cdn_dir}" for t in batch if t not in ran],
                    data=cdn_data(ran, results))

    async def replay(self, number: int, out: _Serialized) -> list[dict[str, Any]]:
        results = await self._store.acdn_results(self._uid)
        ran = [t for t in self._batches[number - 1] if (t.cdn_root_url, t.cdn_dir) in results]
        for target in ran:
            key = (target.cdn_root_url, target.cdn_dir)
            await out.emit(cdn_dir_finished(self._version, target, results[key]), key="/".join(key))
        return cdn_data(ran, results)


class Executor:
    """Runs the hot updates addressed to one ops manager."""

    def __init__(self, *, ops_manager: str, config: OpsManagerConfig, projects: Mapping[str, ProjectConfig],
                 store: StateStore, runner: HostRunner | None = None, max_attempts: int = 3) -> None:
        """``projects``: the configuration of the projects this ops manager serves (inventory, allowed
        commands, cookie file). With a local runner each cookie file is read now (CookieError if it is
        missing or others may read it) into a private HOME for Erlang commands; :meth:`close` removes them."""
        self.ops_manager = ops_manager
        self._config = config
        self._projects = dict(projects)
        local = config.runner.kind == "local"
        self._homes = ErlangHomes({p: c.erlang_cookie_file for p, c in self._projects.items()
                                   if local and c.erlang_cookie_file is not None})
        self._store = store
        self._max_attempts = max_attempts
        self._semaphore = asyncio.Semaphore(config.concurrency)
        self._servers = ServerUpdater(
            runner or make_runner(config.runner), ServerTemplates.of(config.runner),
            ssh_user=config.runner.ssh_user, ssh_port=config.runner.ssh_port, semaphore=self._semaphore,
            command_timeout=config.command_timeout_seconds, ip_timeout=config.ip_timeout_seconds,
        )
        for project, template in config.purge_cmd.items():
            check_purge_template(f"purge_cmd.{project}", template)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        # Set when an abort is requested for the update the task of the same id is running.
        self._halts: dict[str, asyncio.Event] = {}
        self._closing = False

    # --- entry points ----------------------------------------------------------------

    def disallowed(self, envelope: Envelope, event: UpdateRequested) -> list[Refusal]:
        """What the update would touch or run that its project's configuration does not allow."""
        project = self._projects.get(envelope.project)
        if project is None:
            return [Refusal("project", envelope.project, f"is not served by ops manager {self.ops_manager}")]
        return update_refusals(
            project, envelope.area, update_server_list=event.update_server_list,
            cdn_targets=[(t.cdn_root_url, t.cdn_dir) for t in event.data or []],
            erlang_cmd_list=event.erlang_cmd_list,
        )

    def close(self) -> None:
        """Remove the private Erlang HOME directories (and their cookie copies)."""
        self._homes.close()

    async def handle(self, envelope: Envelope, event: UpdateRequested, emit: Emitter) -> None:
        """Run, resume or answer the update ``envelope`` requests; see the module docstring."""
        await self._exclusive(envelope.updateid, lambda halt: self._claim_and_run(envelope, event, emit, halt))

    async def confirm(self, uid: str, batch: int, confirmed_by: str, emitter_for: EmitterFor) -> None:
        """An operator's go-ahead for ``batch``: recorded, and a waiting update carries on."""
        if not await self._store.arecord_confirm(uid, batch, confirmed_by):
            log.debug("update %s: go-ahead for an update this executor does not run; ignored", uid)
            return
        record = await self._store.aget(uid)
        if record is not None and record.status == "waiting" and record.waiting_batch == batch:
            log.info("update %s: go-ahead for batch %d by %s; carrying on", uid, batch, confirmed_by)
            await self.proceed(uid, emitter_for)
        else:
            log.info("update %s: go-ahead for batch %d by %s recorded (update is %s)", uid, batch, confirmed_by,
                     record.status if record else "unknown")

    async def abort(self, uid: str, requested_by: str, reason: str, emitter_for: EmitterFor) -> None:
        """Abort ``uid``: recorded first (it may not have started yet), then its run is told."""
        await self._store.arecord_abort(uid, requested_by, reason)
        halt = self._halts.get(uid)
        if halt is not None:
            halt.set()
            log.info("update %s: abort requested by %s; what runs finishes, nothing new starts", uid, requested_by)
        # Read after telling the run: if it parked meanwhile, it is "waiting" by now (see _park).
        record = await self._store.aget(uid)
        if record is not None and record.status == "waiting":
            log.info("update %s: abort requested by %s while waiting for a go-ahead", uid, requested_by)
            await self.proceed(uid, emitter_for)
        elif halt is None:
            log.info("update %s: abort by %s recorded (update is %s here)", uid, requested_by,
                     record.status if record else "not started")

    async def proceed(self, uid: str, emitter_for: EmitterFor) -> bool:
        """Carry on an update that waits for a go-ahead (one came, or an abort); False if it was not waiting."""
        carried = False

        async def work(halt: asyncio.Event) -> None:
            nonlocal carried
            record = await self._store.areopen(uid)
            if record is None:
                return
            carried = True
            envelope = Envelope.model_validate_json(record.request)
            event = DEFAULT_REGISTRY.decode(envelope)
            if not isinstance(event, UpdateRequested):
                raise TypeError(f"recorded request is a {envelope.type}")
            # Children of the request, numbered after the events published before the wait.
            parent = envelope.model_copy(update={"sequence": envelope.sequence + record.emitted})
            out = _Serialized(emitter_for(parent), base=record.emitted)
            await self._run(envelope, event, out, None, halt, quiet_before=record.waiting_batch or 1)

        await self._exclusive(uid, work)
        return carried

    async def resume_unfinished(self, emitter_for: EmitterFor) -> list[asyncio.Task[None]]:
        """Resume, in the background, updates a previous process left running or interrupted."""
        tasks = []
        for record in await self._store.aunfinished():
            if record.update_id in self._tasks:
                continue
            try:
                envelope = Envelope.model_validate_json(record.request)
                event = DEFAULT_REGISTRY.decode(envelope)
                if not isinstance(event, UpdateRequested):
                    raise TypeError(f"recorded request is a {envelope.type}")
            except (ValueError, TypeError) as exc:
                # Nothing to resume from: fail it explicitly rather than leave it "running".
                log.error("update %s: recorded request unusable (%s); marked failed", record.update_id, exc)
                await self._store.afinish(record.update_id, status="failed", final_result=False,
                                          final_data=f"无法恢复: {exc}", ok_count=0, failed_count=0)
                continue
            log.info("update %s: resuming after a restart (status %s)", record.update_id, record.status)
            tasks.append(asyncio.create_task(self._resume(envelope, event, emitter_for(envelope))))
        return tasks

    async def _resume(self, envelope: Envelope, event: UpdateRequested, emit: Emitter) -> None:
        try:
            await self.handle(envelope, event, emit)
        except UpdateInterrupted:
            log.info("update %s: interrupted again", envelope.updateid)
        except Exception:
            log.exception("update %s: resuming failed; it will be tried again", envelope.updateid)

    async def interrupt(self, timeout: float = 30.0) -> None:
        """Stop taking updates, cancel running ones (killing their commands), record them interrupted."""
        self._closing = True
        tasks = [t for t in self._tasks.values() if not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)

    async def _exclusive(self, uid: str, work: Callable[[asyncio.Event], Awaitable[None]]) -> None:
        """Run ``work`` for ``uid`` once no other work for it runs in this process; wait for it to end."""
        while (running := self._tasks.get(uid)) is not None:
            if running.done():
                self._tasks.pop(uid, None)
                break
            log.info("update %s: already being worked on; waiting for that first", uid)
            await asyncio.wait({running})
        if self._closing:
            raise UpdateInterrupted(f"update {uid}: the executor is stopping")
        # Registered before the task first yields, so an abort arriving from now on reaches it.
        halt = asyncio.Event()
        task = asyncio.create_task(self._interruptible(uid, work(halt)), name=f"update-{uid}")
        self._tasks[uid], self._halts[uid] = task, halt

        def forget(done: asyncio.Task[None]) -> None:
            if self._tasks.get(uid) is done:
                del self._tasks[uid]
            if self._halts.get(uid) is halt:
                del self._halts[uid]

        task.add_done_callback(forget)
        # The run goes on if only this handler is cancelled (a lost channel): a redelivery finds it.
        await asyncio.wait({task})
        if task.cancelled():
            raise UpdateInterrupted(f"update {uid} was interrupted; it resumes when delivered again")
        task.result()

    async def _interruptible(self, uid: str, work: Awaitable[None]) -> None:
        try:
            await work
        except asyncio.CancelledError:
            await asyncio.shield(self._store.amark_interrupted(uid))
            log.warning("update %s: interrupted; recorded as such", uid)
            raise

    # --- one update ------------------------------------------------------------------

    async def _claim_and_run(self, envelope: Envelope, event: UpdateRequested, emit: Emitter,
                             halt: asyncio.Event) -> None:
        uid = envelope.updateid
        record, created = await self._store.aclaim(
            update_id=uid, project=envelope.project, area=envelope.area, update_type=event.update_type,
            version=event.version, request=envelope.model_dump_json(),
        )
        out = _Serialized(emit)
        if record.status in ("finished", "failed"):
            log.info("update %s: already %s; answering from the record", uid, record.status)
            await self._replay(record, event, out)
            return
        if record.status == "waiting":
            # Answered like a resume: the events so far again, then it waits again (or goes on if told meanwhile).
            log.info("update %s: requested again while waiting for a go-ahead for batch %s", uid,
                     record.waiting_batch)
            await self._store.areopen(uid)
        elif not created:
            log.info("update %s: taking over an unfinished run (attempt %d)", uid, record.attempts)
        blocked = None
        if record.attempts > self._max_attempts:
            blocked = f"中断{record.attempts - 1}次, 放弃执行"
        await self._run(envelope, event, out, blocked, halt)

    async def _run(self, envelope: Envelope, event: UpdateRequested, out: _Serialized, blocked: str | None,
                   halt: asyncio.Event, *, quiet_before: int = 1) -> None:
        """Run (or carry on) the update; events of batches before ``quiet_before`` were published already."""
        uid = envelope.updateid
        reason = refusal(event, envelope, self._projects)
        if reason is None and (refused := self.disallowed(envelope, event)):
            # The handler parks such a request before it gets here; this catches a resumed or carried-on
            # update whose project's configuration changed since.
            reason = describe(refused)
        if reason is None and event.erlang_cmd_list and self._config.runner.kind == "local" \
                and self._homes.get(envelope.project) is None:
            reason = f"projects.{envelope.project}.erlang_cookie_file is not set: Erlang commands cannot run"
        if reason is not None:
            log.warning("update %s: refused: %s", uid, reason)
            record = await self._store.afinish(uid, status="failed", final_result=False,
                                               final_data=f"拒绝执行: {reason}", ok_count=0, failed_count=0,
                                               refused=True)
            await out.emit(self._completed(record, event, []))
            return
        if await self._store.aabort_of(uid) is not None:
            halt.set()
        out.muted = quiet_before > 1
        await out.emit(self._started(event))
        directory = incoming_dir(self._config.incoming_root, envelope.project, envelope.area, uid, event.version)
        files, problems = await asyncio.to_thread(verify_incoming, directory, event.update_file_list)
        if problems and blocked is None:
            log.warning("update %s: files in %s failed verification: %s", uid, directory, problems)
            blocked = f"文件校验失败: {', '.join(problems)}"
        targets: _Targets
        if event.update_type == "hot_server":
            job = ServerJob(project=envelope.project, area=envelope.area, update_id=uid, version=event.version,
                            erlang_home=self._homes.get(envelope.project), staged_dir=directory, files=files,
                            commands=tuple(event.erlang_cmd_list), blocked=blocked)
            targets = _ServerTargets(self._store, uid, event, self._servers, job)
        else:
            cdn_job = CdnJob(project=envelope.project, area=envelope.area, update_id=uid, version=event.version,
                             files=files, entries=tuple(event.update_file_list), blocked=blocked)
            updater = CdnUpdater(self._config.cdn_origin_root, purge_cmd=self._config.purge_cmd.get(cdn_job.project),
                                 semaphore=self._semaphore, command_timeout=self._config.command_timeout_seconds)
            targets = _CdnTargets(self._store, uid, event, updater, cdn_job)
        await self._roll_out(uid, event, targets, out, halt, quiet_before)

    async def _roll_out(self, uid: str, event: UpdateRequested, targets: _Targets, out: _Serialized,
                        halt: asyncio.Event, quiet_before: int) -> None:
        plan, total = event.rollout, targets.batch_count()
        recorded = await self._store.abatches(uid)
        ran, not_run = _Ran(), list[str]()
        stopped_after: int | None = None
        aborted = False
        for number in range(1, total + 1):
            out.muted = number < quiet_before
            batch = recorded.get(number)
            if batch is None:
                gate = await self._gate(uid, number, recorded.get(number - 1), plan, halt)
                if gate == "wait":
                    if await self._park(uid, number, out, halt):
                        return
                    gate = await self._gate(uid, number, recorded.get(number - 1), plan, halt)
                if gate != "go":
                    not_run += [key for rest in range(number, total + 1) for key in targets.keys(rest)]
                    if gate == "stopped":
                        stopped_after = number - 1
                    aborted = aborted or gate == "aborted"
                    log.info("update %s: batches %d-%d not run (%s)", uid, number, total, gate)
                    break
            result = await targets.run(number, may_start=batch is None, halt=halt, out=out)
            ran.add(result)
            not_run += result.not_started
            aborted = aborted or bool(result.not_started or result.aborted)
            if batch is None:
                decided = next_step(number, total, failed=bool(result.failed), halted=halt.is_set(), plan=plan)
                batch = await self._store.arecord_batch(
                    uid, BatchRecord(number, result.total - len(result.failed), len(result.failed), decided,
                                     datetime.now(UTC)))
                recorded[number] = batch
                log.info("update %s: batch %d/%d finished, %d ok, %d failed, next: %s", uid, number, total,
                         batch.ok_count, batch.failed_count, batch.next)
            if plan is not None:
                await out.emit(targets.finished(batch), key=str(number))
        out.muted = False
        outcome = outcome_of(aborted=aborted, stopped=stopped_after is not None, failed=len(ran.failed))
        abort = await self._store.aabort_of(uid) if outcome == "aborted" else None
        record = await self._store.afinish(
            uid, status="finished", final_result=outcome == "succeeded",
            final_data=completion_text(outcome, failed=ran.failed, total=ran.total, not_run=not_run,
                                       stopped_after=stopped_after, abort=abort),
            ok_count=ran.total - len(ran.failed), failed_count=len(ran.failed), outcome=outcome, not_run=not_run)
        log.info("update %s: %s finished (%s), %d ok, %d failed, %d not run", uid, event.update_type, outcome,
                 record.ok_count, record.failed_count, len(not_run))
        await out.emit(self._completed(record, event, ran.data))

    async def _gate(self, uid: str, number: int, previous: BatchRecord | None, plan: RolloutPlan | None,
                    halt: asyncio.Event) -> Gate:
        """Whether batch ``number`` may start: go, wait for a go-ahead, or not at all (stopped, aborted)."""
        if previous is not None:
            if previous.next == "stop":
                failed_stop = previous.failed_count > 0 and plan is not None and plan.on_failure == "stop"
                return "stopped" if failed_stop else "aborted"
            if previous.next == "await_confirm" and not await self._store.aconfirmed(uid, number):
                return "aborted" if halt.is_set() else "wait"
            if plan is not None and plan.pause_seconds and not halt.is_set():
                # From the previous batch's end: a restart or a late go-ahead does not pause again.
                until = previous.finished_at + timedelta(seconds=plan.pause_seconds)
                remaining = (until - datetime.now(UTC)).total_seconds()
                if remaining > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(halt.wait(), remaining)
        return "aborted" if halt.is_set() else "go"

    async def _park(self, uid: str, number: int, out: _Serialized, halt: asyncio.Event) -> bool:
        """Record that the update waits for a go-ahead for ``number``; False if one (or an abort) came meanwhile.

        Checked again after recording: a go-ahead recorded before this wait was, whose handler
        then found the update still running, would otherwise never be acted on.
        """
        await self._store.amark_waiting(uid, batch=number, emitted=out.count)
        if not halt.is_set() and not await self._store.aconfirmed(uid, number):
            log.info("update %s: waiting for a go-ahead (batch.confirmed) for batch %d", uid, number)
            return True
        await self._store.areopen(uid)
        return False

    # --- answering from the record -------------------------------------------------------

    async def _replay(self, record: UpdateRecord, incoming: UpdateRequested, out: _Serialized) -> None:
        # "failed" updates (refused, or unrecoverable) ran no target: their answer is the completion alone.
        if record.status == "failed":
            await out.emit(self._completed(record, incoming, []))
            return
        event = DEFAULT_REGISTRY.decode(Envelope.model_validate_json(record.request))  # what actually ran
        assert isinstance(event, UpdateRequested)
        await out.emit(self._started(event))
        targets: _Targets
        if event.update_type == "hot_server":
            targets = _ServerTargets(self._store, record.update_id, event)
        else:
            targets = _CdnTargets(self._store, record.update_id, event)
        batches = await self._store.abatches(record.update_id)
        data: list[dict[str, Any]] = []
        for number in range(1, targets.batch_count() + 1):
            data += await targets.replay(number, out)
            if event.rollout is not None and number in batches:
                await out.emit(targets.finished(batches[number]), key=str(number))
        await out.emit(self._completed(record, event, data))

    def _started(self, event: UpdateRequested) -> UpdateStarted:
        return UpdateStarted(update_type=event.update_type, version=event.version, ops_manager=self.ops_manager,
                             ips=ips_of(ip_units(event.update_server_list or {})),
                             cdn_dirs=unique_targets(event.data or []))

    @staticmethod
    def _completed(record: UpdateRecord, event: UpdateRequested, data: list[dict[str, Any]]) -> UpdateCompleted:
        final_result = bool(record.final_result)
        return UpdateCompleted(update_type=event.update_type, version=event.version,
                               final_result=final_result, final_data=record.final_data, data=data,
                               ok_count=record.ok_count, failed_count=record.failed_count,
                               outcome=record.outcome or ("succeeded" if final_result else "failed"),
                               not_run=list(record.not_run))


# --- pure helpers ---------------------------------------------------------------------------

_SERVER = TypeAdapter(ServerName)
_IP = TypeAdapter(IpAddress)
_CDN_DIR = TypeAdapter(CdnDir)
_HOST = TypeAdapter(HostName)
_FILE = TypeAdapter(RelativeFileName)


def refusal(event: UpdateRequested, envelope: Envelope, projects: Mapping[str, object]) -> str | None:
    """Why the update must not run at all, or None.

    The event was validated when decoded; this checks again every value that becomes a path
    or a process argument, so an event built any other way cannot smuggle one in.
    """
    if envelope.project not in projects:
        return f"项目 {envelope.project} 不由本运维管理机负责"
    try:
        update_path(envelope.project, envelope.area, envelope.updateid, event.version)
        for entry in event.update_file_list:
            _FILE.validate_python(entry.file_name)
        for by_ip in (event.update_server_list or {}).values():
            for ip, servers in by_ip.items():
                _IP.validate_python(ip)
                for server in servers:
                    _SERVER.validate_python(server)
        for target in event.data or []:
            _HOST.validate_python(target.cdn_root_url)
            _CDN_DIR.validate_python(target.cdn_dir)
    except ValidationError as exc:
        return "; ".join(str(err["msg"]) for err in exc.errors())
    except LayoutError as exc:
        return str(exc)
    for command in event.erlang_cmd_list:
        if not command.strip() or "\x00" in command:
            return "erlang_cmd_list: an empty or NUL-containing command"
    return None


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
