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

This module coordinates (one run per update id, aborts, go-aheads, resuming, shutting down)
and prepares a run; the run itself is :func:`~consumers.ops_executor.rollout_run.roll_out` over
the :mod:`~consumers.ops_executor.targets` of the update, and a repeated request is answered by
:func:`~consumers.ops_executor.answer.answer_from_record`. Records are the plain values of
:mod:`~consumers.ops_executor.records`; only :mod:`~consumers.ops_executor.state` knows the tables.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping

from pydantic import TypeAdapter, ValidationError

from bus.contract.envelope import Envelope
from bus.contract.events import UpdateRequested
from bus.contract.registry import DEFAULT_REGISTRY
from bus.handling import Emitter
from consumers.ops_executor.answer import answer_from_record, completed_event, started_event
from consumers.ops_executor.hot_client import CdnJob, CdnUpdater
from consumers.ops_executor.hot_server import ServerJob, ServerUpdater
from consumers.ops_executor.incoming import verify_incoming
from consumers.ops_executor.records import VerdictRecord
from consumers.ops_executor.rollout import summary
from consumers.ops_executor.rollout_run import roll_out
from consumers.ops_executor.runner import HostRunner, LocalRunner
from consumers.ops_executor.ssh_runner import SshRunner
from consumers.ops_executor.state import StateStore
from consumers.ops_executor.targets import CdnTargets, Serialized, ServerTargets, Targets
from consumers.ops_executor.templates import ServerTemplates, check_purge_template
from domain.allowed import Refusal, describe, update_refusals
from domain.config import OpsManagerConfig, ProjectConfig
from domain.erlang_cookie import ErlangHomes
from domain.layout import LayoutError, incoming_dir, update_path
from domain.types import CdnDir, HostName, IpAddress, RelativeFileName, ServerName

log = logging.getLogger(__name__)

__all__ = ["EmitterFor", "Executor", "UpdateInterrupted", "refusal", "summary"]

EmitterFor = Callable[[Envelope], Emitter]


class UpdateInterrupted(RuntimeError):
    """The executor is stopping: the update is recorded as interrupted and will be resumed."""


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
            runner or make_runner(config), ServerTemplates.of(config.runner),
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
        if not await self._store.record_confirm(uid, batch, confirmed_by):
            log.debug("update %s: go-ahead for an update this executor does not run; ignored", uid)
            return
        record = await self._store.get(uid)
        if record is not None and record.status == "waiting" and record.waiting_batch == batch:
            log.info("update %s: go-ahead for batch %d by %s; carrying on", uid, batch, confirmed_by)
            await self.proceed(uid, emitter_for)
        else:
            log.info("update %s: go-ahead for batch %d by %s recorded (update is %s)", uid, batch, confirmed_by,
                     record.status if record else "unknown")

    async def record_verdict(self, uid: str, verdict: VerdictRecord) -> None:
        """An analysis tool's verdict on a batch: recorded; the rollout waiting for it reads it (rollout_run)."""
        if not await self._store.record_verdict(uid, verdict):
            log.debug("update %s: analysis verdict for an update this executor does not run; ignored", uid)
            return
        log.info("update %s: analysis verdict on batch %d: %s by %s", uid, verdict.batch, verdict.verdict,
                 verdict.analysed_by)

    async def abort(self, uid: str, requested_by: str, reason: str, emitter_for: EmitterFor) -> None:
        """Abort ``uid``: recorded first (it may not have started yet), then its run is told."""
        await self._store.record_abort(uid, requested_by, reason)
        halt = self._halts.get(uid)
        if halt is not None:
            halt.set()
            log.info("update %s: abort requested by %s; what runs finishes, nothing new starts", uid, requested_by)
        # Read after telling the run: if it parked meanwhile, it is "waiting" by now (see _park).
        record = await self._store.get(uid)
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
            record = await self._store.reopen(uid)
            if record is None:
                return
            carried = True
            envelope = Envelope.model_validate_json(record.request)
            event = DEFAULT_REGISTRY.decode(envelope)
            if not isinstance(event, UpdateRequested):
                raise TypeError(f"recorded request is a {envelope.type}")
            # Children of the request, numbered after the events published before the wait.
            parent = envelope.model_copy(update={"sequence": envelope.sequence + record.emitted})
            out = Serialized(emitter_for(parent), base=record.emitted)
            await self._run(envelope, event, out, None, halt, quiet_before=record.waiting_batch or 1)

        await self._exclusive(uid, work)
        return carried

    async def resume_unfinished(self, emitter_for: EmitterFor) -> list[asyncio.Task[None]]:
        """Resume, in the background, updates a previous process left running or interrupted."""
        tasks = []
        for record in await self._store.unfinished():
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
                await self._store.finish(record.update_id, status="failed", final_result=False,
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
            await asyncio.shield(self._store.mark_interrupted(uid))
            log.warning("update %s: interrupted; recorded as such", uid)
            raise

    # --- one update ------------------------------------------------------------------

    async def _claim_and_run(self, envelope: Envelope, event: UpdateRequested, emit: Emitter,
                             halt: asyncio.Event) -> None:
        uid = envelope.updateid
        record, created = await self._store.claim(
            update_id=uid, project=envelope.project, area=envelope.area, update_type=event.update_type,
            version=event.version, request=envelope.model_dump_json(),
        )
        out = Serialized(emit)
        if record.status in ("finished", "failed"):
            log.info("update %s: already %s; answering from the record", uid, record.status)
            await answer_from_record(self._store, self.ops_manager, record, event, out)
            return
        if record.status == "waiting":
            # Answered like a resume: the events so far again, then it waits again (or goes on if told meanwhile).
            log.info("update %s: requested again while waiting for a go-ahead for batch %s", uid,
                     record.waiting_batch)
            await self._store.reopen(uid)
        elif not created:
            log.info("update %s: taking over an unfinished run (attempt %d)", uid, record.attempts)
        blocked = None
        if record.attempts > self._max_attempts:
            blocked = f"中断{record.attempts - 1}次, 放弃执行"
        await self._run(envelope, event, out, blocked, halt)

    async def _run(self, envelope: Envelope, event: UpdateRequested, out: Serialized, blocked: str | None,
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
            record = await self._store.finish(uid, status="failed", final_result=False,
                                               final_data=f"拒绝执行: {reason}", ok_count=0, failed_count=0,
                                               refused=True)
            await out.emit(completed_event(record, event, []))
            return
        if await self._store.abort_of(uid) is not None:
            halt.set()
        out.muted = quiet_before > 1
        await out.emit(started_event(event, self.ops_manager))
        directory = incoming_dir(self._config.incoming_root, envelope.project, envelope.area, uid, event.version)
        files, problems = await asyncio.to_thread(verify_incoming, directory, event.update_file_list)
        if problems and blocked is None:
            log.warning("update %s: files in %s failed verification: %s", uid, directory, problems)
            blocked = f"文件校验失败: {', '.join(problems)}"
        targets: Targets
        if event.update_type == "hot_server":
            job = ServerJob(project=envelope.project, area=envelope.area, update_id=uid, version=event.version,
                            erlang_home=self._homes.get(envelope.project), staged_dir=directory, files=files,
                            commands=tuple(event.erlang_cmd_list), blocked=blocked)
            targets = ServerTargets(self._store, uid, event, self._servers, job)
        else:
            cdn_job = CdnJob(project=envelope.project, area=envelope.area, update_id=uid, version=event.version,
                             files=files, entries=tuple(event.update_file_list), blocked=blocked)
            updater = CdnUpdater(self._config.cdn_origin_root, purge_cmd=self._config.purge_cmd.get(cdn_job.project),
                                 semaphore=self._semaphore, command_timeout=self._config.command_timeout_seconds)
            targets = CdnTargets(self._store, uid, event, updater, cdn_job)
        await roll_out(self._store, uid, event, targets, out, halt, quiet_before)

# --- pure helpers ---------------------------------------------------------------------------


def make_runner(config: OpsManagerConfig) -> HostRunner:
    """The runner the configuration names: over SSH to the game hosts, or on this machine."""
    return SshRunner(config.runner) if config.runner.kind == "ssh" else LocalRunner()


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
