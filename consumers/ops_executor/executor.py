"""Running an *update requested* exactly once per update id, whatever the broker redelivers.

- A new update is claimed in the state store, run, and reported: *update started* at once,
  *IP finished* / *CDN dir finished* per target as it finishes, *update completed* last.
- A request for an update already finished (or failed: refused, unrecoverable) is answered from the record:
  the same events again, with the same ids when the request is the same message.
- A request for an update this process is running waits for that run, then answers from it.
- An update found unfinished (its executor was stopped or crashed) is resumed: targets with
  a recorded result keep it and are not run again, the others run. After ``max_attempts``
  takeovers the rest is failed explicitly ("放弃执行"), so nothing stays "running" forever.
- On shutdown running updates are cancelled (their commands killed), marked "interrupted",
  and their handlers raise :class:`UpdateInterrupted` so the broker delivers them again later.

One executor process per ops manager: two processes sharing a state database would each
take the other's running update for an interrupted one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Any

from pydantic import TypeAdapter, ValidationError

from bus.envelope import Envelope
from bus.events import (
    CdnDirFinished,
    CdnTarget,
    Event,
    ServerResult,
    UpdateCompleted,
    UpdateRequested,
    UpdateStarted,
)
from bus.handling import Emitter
from bus.registry import DEFAULT_REGISTRY
from consumers.ops_executor.hot_client import CdnJob, CdnUpdater
from consumers.ops_executor.hot_server import (
    IpUnit,
    ServerJob,
    ServerUpdater,
    failures,
    ip_finished,
    ip_units,
)
from consumers.ops_executor.incoming import verify_incoming
from consumers.ops_executor.runner import HostRunner, make_runner
from consumers.ops_executor.state import ServerKey, ServerOutcome, StateStore, UpdateRecord
from consumers.ops_executor.templates import ServerTemplates, check_purge_template
from domain.config import OpsManagerConfig
from domain.layout import LayoutError, incoming_dir, update_path
from domain.types import CdnDir, HostName, IpAddress, RelativeFileName, ServerName

log = logging.getLogger(__name__)

ALL_DONE = "全部完成"  # the seed's final_data on success
EmitterFor = Callable[[Envelope], Emitter]


class UpdateInterrupted(RuntimeError):
    """The executor is stopping: the update is recorded as interrupted and will be resumed."""


class _Serialized:
    """An emitter used by concurrent IP tasks: one publish at a time, in the order they finish."""

    def __init__(self, emit: Emitter) -> None:
        self._emit = emit
        self._lock = asyncio.Lock()

    async def emit(self, event: Event, *, key: str = "") -> None:
        async with self._lock:
            await self._emit.emit(event, key=key)


class Executor:
    """Runs the hot updates addressed to one ops manager."""

    def __init__(self, *, ops_manager: str, config: OpsManagerConfig, cookies: dict[str, str],
                 store: StateStore, runner: HostRunner | None = None, max_attempts: int = 3) -> None:
        self.ops_manager = ops_manager
        self._config = config
        self._cookies = cookies
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
        self._closing = False

    # --- entry points ----------------------------------------------------------------

    async def handle(self, envelope: Envelope, event: UpdateRequested, emit: Emitter) -> None:
        """Run, resume or answer the update ``envelope`` requests; see the module docstring."""
        uid = envelope.updateid
        while (running := self._tasks.get(uid)) is not None:
            if running.done():
                self._tasks.pop(uid, None)
                break
            log.info("update %s: requested again while running; waiting for that run", uid)
            await asyncio.wait({running})
        if self._closing:
            raise UpdateInterrupted(f"update {uid}: the executor is stopping")
        task = asyncio.create_task(self._claim_and_run(envelope, event, emit), name=f"update-{uid}")
        self._tasks[uid] = task
        # The run goes on if only this handler is cancelled (a lost channel): a redelivery finds it.
        await asyncio.wait({task})
        if self._tasks.get(uid) is task:
            del self._tasks[uid]
        if task.cancelled():
            raise UpdateInterrupted(f"update {uid} was interrupted; it resumes when delivered again")
        task.result()

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

    # --- one update ------------------------------------------------------------------

    async def _claim_and_run(self, envelope: Envelope, event: UpdateRequested, emit: Emitter) -> None:
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
        if not created:
            log.info("update %s: taking over an unfinished run (attempt %d)", uid, record.attempts)
        blocked = None
        if record.attempts > self._max_attempts:
            blocked = f"中断{record.attempts - 1}次, 放弃执行"
        try:
            await self._run(envelope, event, out, blocked)
        except asyncio.CancelledError:
            await asyncio.shield(self._store.amark_interrupted(uid))
            log.warning("update %s: interrupted; recorded as such", uid)
            raise

    async def _run(self, envelope: Envelope, event: UpdateRequested, out: _Serialized, blocked: str | None) -> None:
        uid = envelope.updateid
        reason = refusal(event, envelope, self._cookies)
        if reason is not None:
            log.warning("update %s: refused: %s", uid, reason)
            record = await self._store.afinish(uid, status="failed", final_result=False,
                                               final_data=f"拒绝执行: {reason}", ok_count=0, failed_count=0,
                                               refused=True)
            await out.emit(self._completed(record, event, []))
            return
        await out.emit(self._started(event))
        directory = incoming_dir(self._config.incoming_root, envelope.project, envelope.area, uid, event.version)
        files, problems = await asyncio.to_thread(verify_incoming, directory, event.update_file_list)
        if problems and blocked is None:
            log.warning("update %s: files in %s failed verification: %s", uid, directory, problems)
            blocked = f"文件校验失败: {', '.join(problems)}"
        if event.update_type == "hot_server":
            job = ServerJob(project=envelope.project, area=envelope.area, update_id=uid, version=event.version,
                            cookie=self._cookies[envelope.project], staged_dir=directory, files=files,
                            commands=tuple(event.erlang_cmd_list), blocked=blocked)
            await self._hot_server(uid, event, job, out)
        else:
            cdn_job = CdnJob(project=envelope.project, area=envelope.area, update_id=uid, version=event.version,
                             files=files, entries=tuple(event.update_file_list), blocked=blocked)
            await self._hot_client(uid, event, cdn_job, out)

    async def _hot_server(self, uid: str, event: UpdateRequested, job: ServerJob, out: _Serialized) -> None:
        units = ip_units(event.update_server_list or {})
        done = await self._store.aserver_results(uid)
        results: dict[ServerKey, ServerOutcome] = {}

        async def record(key: ServerKey, outcome: ServerOutcome) -> None:
            await self._store.arecord_server(uid, key, outcome)

        async def one_ip(unit: IpUnit) -> None:
            by_server = await self._servers.run_ip(job, unit, done, record)
            results.update({(unit.group, unit.ip, s): o for s, o in by_server.items()})
            await out.emit(ip_finished(event.version, unit, by_server), key=unit.key)

        async with asyncio.TaskGroup() as group:
            for unit in units:
                group.create_task(one_ip(unit))
        failed = failures(units, results)
        total = len(results)
        record_ = await self._store.afinish(uid, status="finished", final_result=not failed,
                                            final_data=summary(failed, total), ok_count=total - len(failed),
                                            failed_count=len(failed))
        log.info("update %s: hot_server finished, %d ok, %d failed", uid, total - len(failed), len(failed))
        await out.emit(self._completed(record_, event, []))

    async def _hot_client(self, uid: str, event: UpdateRequested, job: CdnJob, out: _Serialized) -> None:
        targets = unique_targets(event.data or [])
        done = await self._store.acdn_results(uid)
        updater = CdnUpdater(self._config.cdn_origin_root, purge_cmd=self._config.purge_cmd.get(job.project),
                             semaphore=self._semaphore, command_timeout=self._config.command_timeout_seconds)
        results: dict[tuple[str, str], ServerResult] = {}

        async def one_dir(target: CdnTarget) -> None:
            key = (target.cdn_root_url, target.cdn_dir)
            result = done.get(key)
            if result is None:
                result = await updater.run_dir(job, *key)
                await self._store.arecord_cdn(uid, key, result)
            results[key] = result
            await out.emit(cdn_dir_finished(event.version, target, result), key="/".join(key))

        async with asyncio.TaskGroup() as group:
            for target in targets:
                group.create_task(one_dir(target))
        failed = [f"{url}/{d}" for (url, d), r in results.items() if not r.status]
        record = await self._store.afinish(uid, status="finished", final_result=not failed,
                                           final_data=summary(failed, len(results)),
                                           ok_count=len(results) - len(failed), failed_count=len(failed))
        log.info("update %s: hot_client finished, %d ok, %d failed", uid, record.ok_count, record.failed_count)
        await out.emit(self._completed(record, event, cdn_data(targets, results)))

    # --- answering from the record -------------------------------------------------------

    async def _replay(self, record: UpdateRecord, incoming: UpdateRequested, out: _Serialized) -> None:
        # "failed" updates (refused, or unrecoverable) ran no target: their answer is the completion alone.
        if record.status == "failed":
            await out.emit(self._completed(record, incoming, []))
            return
        event = DEFAULT_REGISTRY.decode(Envelope.model_validate_json(record.request))  # what actually ran
        assert isinstance(event, UpdateRequested)
        await out.emit(self._started(event))
        if event.update_type == "hot_server":
            results = await self._store.aserver_results(record.update_id)
            for unit in ip_units(event.update_server_list or {}):
                by_server = {s: results[(unit.group, unit.ip, s)] for s in unit.servers}
                await out.emit(ip_finished(event.version, unit, by_server), key=unit.key)
            await out.emit(self._completed(record, event, []))
        else:
            targets = unique_targets(event.data or [])
            cdn = await self._store.acdn_results(record.update_id)
            for target in targets:
                key = (target.cdn_root_url, target.cdn_dir)
                await out.emit(cdn_dir_finished(event.version, target, cdn[key]), key="/".join(key))
            await out.emit(self._completed(record, event, cdn_data(targets, cdn)))

    def _started(self, event: UpdateRequested) -> UpdateStarted:
        ips = list(dict.fromkeys(u.ip for u in ip_units(event.update_server_list or {})))
        return UpdateStarted(update_type=event.update_type, version=event.version, ops_manager=self.ops_manager,
                             ips=ips, cdn_dirs=unique_targets(event.data or []))

    @staticmethod
    def _completed(record: UpdateRecord, event: UpdateRequested, data: list[dict[str, Any]]) -> UpdateCompleted:
        return UpdateCompleted(update_type=event.update_type, version=event.version,
                               final_result=bool(record.final_result), final_data=record.final_data, data=data,
                               ok_count=record.ok_count, failed_count=record.failed_count)


# --- pure helpers ---------------------------------------------------------------------------

_SERVER = TypeAdapter(ServerName)
_IP = TypeAdapter(IpAddress)
_CDN_DIR = TypeAdapter(CdnDir)
_HOST = TypeAdapter(HostName)
_FILE = TypeAdapter(RelativeFileName)


def refusal(event: UpdateRequested, envelope: Envelope, cookies: dict[str, str]) -> str | None:
    """Why the update must not run at all, or None.

    The event was validated when decoded; this checks again every value that becomes a path
    or a process argument, so an event built any other way cannot smuggle one in.
    """
    if envelope.project not in cookies:
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


def summary(failed: list[str], total: int) -> str:
    """The seed's ``final_data``: "全部完成", or how many failed and which."""
    if not failed:
        return ALL_DONE
    shown = ", ".join(failed[:20]) + (f" 等{len(failed)}个" if len(failed) > 20 else "")
    return f"{len(failed)}/{total} 失败: {shown}"


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
