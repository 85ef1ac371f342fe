"""ops_executor's one handler: *update requested* → *update started*, per-target results, *update completed*."""

from __future__ import annotations

import logging

from bus.events import UpdateRequested
from bus.handling import Emitter, Incoming
from consumers.ops_executor.executor import Executor

log = logging.getLogger(__name__)


async def handle_update_requested(msg: Incoming[UpdateRequested], emit: Emitter, *, executor: Executor) -> None:
    """Run the update if it is addressed to this ops manager (the queue is bound by project only)."""
    env, event = msg.envelope, msg.event
    if event.ops_manager != executor.ops_manager:
        # Several ops managers may serve one project (one per area): the request names its own.
        log.debug("update %s is for ops manager %s, not %s; ignored", env.updateid, event.ops_manager,
                  executor.ops_manager)
        return
    log.info("update requested id=%s update=%s type=%s version=%s redelivered=%s",
             env.id, env.updateid, event.update_type, event.version, msg.redelivered)
    await executor.handle(env, event, emit)
