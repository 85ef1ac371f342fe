"""file_push's one handler: *push requested* → *files pushed* or *push failed*."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from bus.contract.events import FilesPushed, PushFailed, PushRequested, RsyncTargetRef, RsyncTargetResult
from bus.handling import Emitter, Incoming
from bus.wiring import Handlers
from consumers.file_push.files import FileCheckError, check_files
from consumers.file_push.rsync import RsyncResult, push_files
from consumers.file_push.targets import ResolvedTarget, resolve_targets
from domain.config import ProjectConfig, ReceiverConfig
from domain.layout import backup_type_root, receiver_backup_dir, update_path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PushSettings:
    """What the handler needs from the configuration: the receiver and the projects it serves."""

    receiver: ReceiverConfig
    projects: Mapping[str, ProjectConfig]
    rsync: str = "rsync"


async def handle_push_requested(msg: Incoming[PushRequested], emit: Emitter, *, settings: PushSettings) -> None:
    """Check the request, rsync the chosen files to every target, and publish the outcome."""
    env, event = msg.envelope, msg.event
    project = settings.projects.get(env.project)
    if project is None or env.project not in settings.receiver.projects:
        log.error("push %s for project %s not served here (update %s); ignored", env.id, env.project, env.updateid)
        return

    resolved, refused = resolve_targets(project, event.update_type, env.area, event.targets)
    if refused:
        why = "; ".join(f"{r.ref.name}: {r.why}" for r in refused)
        await _fail(emit, event, event.targets, f"refused rsync target(s): {why}", msg)
        return

    root = settings.receiver.backup_root
    backup = receiver_backup_dir(root, event.update_type, env.project, env.area, env.updateid, event.version)
    try:
        await asyncio.to_thread(check_files, backup, event.files)
    except FileCheckError as exc:
        await _fail(emit, event, [t.ref for t in resolved], f"refused files: {exc}", msg)
        return

    # Names relative to the type root start with the update path, so rsync recreates
    # <project>/<area>/<update id>/<version>/ in the module: the ops manager's incoming_dir.
    prefix = update_path(env.project, env.area, env.updateid, event.version)
    names = [str(prefix / f.file_name) for f in event.files]
    source_root = backup_type_root(root, event.update_type)
    outcomes = await asyncio.gather(
        *(
            asyncio.to_thread(
                push_files,
                t.daemon,
                source_root,
                names,
                timeout_seconds=settings.receiver.rsync_timeout_seconds,
                rsync=settings.rsync,
            )
            for t in resolved
        )
    )
    results = [_result(t, o) for t, o in zip(resolved, outcomes, strict=True)]
    failed = [r.name for r in results if not r.ok]
    for r in results:
        log.info(
            "push id=%s update=%s target=%s ok=%s bytes=%d seconds=%.2f %s",
            env.id, env.updateid, r.name, r.ok, r.bytes, r.seconds, r.error,
        )
    if failed:
        reason = "rsync failed for " + ", ".join(failed)
        await emit.emit(
            PushFailed(
                update_type=event.update_type, version=event.version, targets=results, failed_targets=failed,
                reason=reason,
            )
        )
        return
    await emit.emit(FilesPushed(update_type=event.update_type, version=event.version, targets=results))


async def _fail(
    emit: Emitter, event: PushRequested, refs: Sequence[RsyncTargetRef], reason: str, msg: Incoming[PushRequested]
) -> None:
    """Nothing was sent: every target is reported failed with the same reason."""
    log.warning("push refused id=%s update=%s: %s", msg.envelope.id, msg.envelope.updateid, reason)
    results = [RsyncTargetResult(**ref.model_dump(), ok=False, error=reason) for ref in refs]
    await emit.emit(
        PushFailed(
            update_type=event.update_type,
            version=event.version,
            targets=results,
            failed_targets=[r.name for r in results],
            reason=reason,
        )
    )


def _result(target: ResolvedTarget, outcome: RsyncResult) -> RsyncTargetResult:
    return RsyncTargetResult(
        **target.ref.model_dump(), ok=outcome.ok, bytes=outcome.bytes, seconds=outcome.seconds, error=outcome.error
    )


HANDLERS: Handlers = {PushRequested: handle_push_requested}
"""What file_push handles; its service binds them (bus/wiring.py)."""
