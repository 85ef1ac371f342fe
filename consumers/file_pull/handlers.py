"""file_pull's one handler: *pull requested* → *files pulled* or *pull failed*."""

from __future__ import annotations

import asyncio
import logging

from bus.contract.events import FileEntry, FilesPulled, PullFailed, PullRequested
from bus.handling import Emitter, Incoming
from bus.wiring import Handlers
from consumers.file_pull.paths import pull_paths
from consumers.file_pull.problems import PullProblem
from consumers.file_pull.pull import pull_version
from domain.config import ReceiverConfig

log = logging.getLogger(__name__)


async def handle_pull_requested(msg: Incoming[PullRequested], emit: Emitter, *, receiver: ReceiverConfig) -> None:
    """Copy the version to the update's backup and publish its file list, or why it could not be done."""
    env, event = msg.envelope, msg.event
    if env.project not in receiver.projects:
        # The queue is bound only to this receiver's projects; anything else is a wiring
        # mistake, and answering for a project served elsewhere would race its receiver.
        log.error("pull %s for project %s not served here (update %s); ignored", env.id, env.project, env.updateid)
        return
    paths = pull_paths(receiver, event.update_type, env.project, env.area, env.updateid, event.version)
    try:
        # Copying and hashing block; a thread keeps the event loop (heartbeats, other messages) live.
        pulled = await asyncio.to_thread(pull_version, paths)
    except PullProblem as problem:
        log.warning(
            "pull failed id=%s update=%s reason=%s detail=%s", env.id, env.updateid, problem.reason, problem.detail
        )
        await emit.emit(
            PullFailed(
                update_type=event.update_type, version=event.version, reason=problem.reason, detail=problem.detail
            )
        )
        return
    await emit.emit(
        FilesPulled(
            update_type=event.update_type,
            version=event.version,
            source_dir=str(paths.source),
            backup_dir=str(paths.backup),
            files=[FileEntry(file_name=f.name, file_md5=f.md5, size=f.size) for f in pulled.files],
            total_bytes=pulled.total_bytes,
        )
    )
    log.info(
        "pulled id=%s update=%s files=%d bytes=%d reused=%s backup=%s",
        env.id, env.updateid, len(pulled.files), pulled.total_bytes, pulled.reused, paths.backup,
    )


HANDLERS: Handlers = {PullRequested: handle_pull_requested}
"""What file_pull handles; its service binds them (bus/wiring.py)."""
