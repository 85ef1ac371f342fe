"""ops_executor's handlers: one per event it consumes.

- *update requested* → *update started*, per-target results, *batch finished*, *update completed*.
- *batch confirmed* → a waiting update's next batch (and the rest) runs.
- *update abort requested* → the running update starts nothing more and completes "aborted".
- *analysis verdict* → recorded; a rollout awaiting analysis of that batch goes on or stops.

The queue is bound by project only: each handler acts on updates of this ops manager alone.
A request for anything the project's configuration does not allow (a server, IP or CDN dir
outside the inventory, an Erlang command outside ``erlang_cmd_allowed``) is parked with the
reason before anything is recorded or run: whoever published it, the executor checks.
Events after a go-ahead or an abort are children of the update's request, published through
``emitter_for``, not of the operator's event.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from bus.consumer import Reject
from bus.contract.events import AnalysisVerdict, BatchConfirmed, UpdateAbortRequested, UpdateRequested
from bus.handling import Emitter, Incoming
from bus.wiring import Handlers
from consumers.ops_executor.executor import EmitterFor, Executor
from consumers.ops_executor.records import VerdictRecord
from domain.allowed import describe

log = logging.getLogger(__name__)


async def handle_update_requested(msg: Incoming[UpdateRequested], emit: Emitter, *, executor: Executor) -> None:
    """Run the update if it is addressed to this ops manager."""
    env, event = msg.envelope, msg.event
    if event.ops_manager != executor.ops_manager:
        # Several ops managers may serve one project (one per area): the request names its own.
        log.debug("update %s is for ops manager %s, not %s; ignored", env.updateid, event.ops_manager,
                  executor.ops_manager)
        return
    if refused := executor.disallowed(env, event):
        log.warning("update %s: refused, not allowed by the configuration: %s", env.updateid, describe(refused))
        raise Reject(f"not allowed by the configuration of project {env.project}: {describe(refused)}")
    log.info("update requested id=%s update=%s type=%s version=%s rollout=%s redelivered=%s",
             env.id, env.updateid, event.update_type, event.version, event.rollout, msg.redelivered)
    await executor.handle(env, event, emit)


async def handle_batch_confirmed(msg: Incoming[BatchConfirmed], emit: Emitter, *, executor: Executor,
                                 emitter_for: EmitterFor) -> None:
    """Record the go-ahead; an update of this executor waiting for exactly that batch carries on."""
    env, event = msg.envelope, msg.event
    log.info("batch confirmed id=%s update=%s batch=%d by=%s", env.id, env.updateid, event.batch,
             event.confirmed_by)
    await executor.confirm(env.updateid, event.batch, event.confirmed_by, emitter_for)


async def handle_update_abort_requested(msg: Incoming[UpdateAbortRequested], emit: Emitter, *, executor: Executor,
                                        emitter_for: EmitterFor) -> None:
    """Record the abort and tell the running update (or complete a waiting one as aborted)."""
    env, event = msg.envelope, msg.event
    log.info("abort requested id=%s update=%s by=%s reason=%r", env.id, env.updateid, event.requested_by,
             event.reason)
    await executor.abort(env.updateid, event.requested_by, event.reason, emitter_for)


async def handle_analysis_verdict(msg: Incoming[AnalysisVerdict], emit: Emitter, *, executor: Executor) -> None:
    """Record an analysis tool's verdict on a batch of an update this executor runs (the first one counts)."""
    env, event = msg.envelope, msg.event
    log.info("analysis verdict id=%s update=%s batch=%d verdict=%s by=%s", env.id, env.updateid, event.batch,
             event.verdict, event.analysed_by)
    await executor.record_verdict(env.updateid, VerdictRecord(event.batch, event.verdict, event.reason, event.link,
                                                              event.analysed_by, datetime.now(UTC)))


HANDLERS: Handlers = {
    UpdateRequested: handle_update_requested,
    BatchConfirmed: handle_batch_confirmed,
    UpdateAbortRequested: handle_update_abort_requested,
    AnalysisVerdict: handle_analysis_verdict,
}
"""What the executor handles; its service binds them (bus/wiring.py) and binds its queue to each."""
