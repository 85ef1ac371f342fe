"""The states of a hot update and which step may move it where.

Every state change goes through :func:`require`, so a redelivered or late event finds
the update already moved on and changes nothing. The operator's actions (issue 9) are
checked here too: abort, confirm, retry failed and rollback each name the states they
accept, and a refusal says what the update is and what the action needs.
"""

from __future__ import annotations

from collections.abc import Collection
from enum import StrEnum

from producers.cmdb.errors import BadState


class State(StrEnum):
    PULL_REQUESTED = "pull_requested"
    PULLED = "pulled"
    PULL_FAILED = "pull_failed"
    PUSH_REQUESTED = "push_requested"
    PUSHED = "pushed"  # recorded as pushed_at: files pushed becomes update_requested in the same transaction
    PUSH_FAILED = "push_failed"
    UPDATE_REQUESTED = "update_requested"
    RUNNING = "running"
    AWAITING_CONFIRM = "awaiting_confirm"  # a failed batch under on_failure=confirm: the operator decides
    ABORTING = "aborting"  # abort requested; the executor finishes what already started
    # The completion event is in but some expected target has not reported yet: not "completed"
    # until every result is in (the view's missing_targets names them).
    FINISHING = "finishing"
    COMPLETED = "completed"
    FAILED = "failed"
    STOPPED = "stopped"  # a failed batch under on_failure=stop; later batches never ran
    ABORTED = "aborted"


# What each step accepts as the update's current state.
CAN_PUSH: frozenset[State] = frozenset({State.PULLED, State.PUSH_FAILED})  # a failed push may be retried
AWAITING_PULL: frozenset[State] = frozenset({State.PULL_REQUESTED})
AWAITING_PUSH: frozenset[State] = frozenset({State.PUSH_REQUESTED})
AWAITING_EXECUTION: frozenset[State] = frozenset(
    {State.UPDATE_REQUESTED, State.RUNNING, State.AWAITING_CONFIRM, State.ABORTING}
)
"""Before the executor's completion: its events (started, results, batches, completion) are expected."""

ENDED: frozenset[State] = frozenset({State.COMPLETED, State.FAILED, State.STOPPED, State.ABORTED})
"""The executor's completion and every expected target's result are in."""
FINAL: frozenset[State] = frozenset({State.PULL_FAILED, *ENDED})
IN_PROGRESS: frozenset[State] = frozenset(
    {State.PULL_REQUESTED, State.PUSH_REQUESTED, State.PUSHED, State.UPDATE_REQUESTED, State.RUNNING,
     State.ABORTING, State.FINISHING}
)
"""States that change without the operator doing anything (a script polls until it leaves them)."""

# The operator's actions on a requested update.
CAN_ABORT: frozenset[State] = frozenset({State.UPDATE_REQUESTED, State.RUNNING, State.AWAITING_CONFIRM})
CAN_CONFIRM: frozenset[State] = frozenset({State.AWAITING_CONFIRM})
CAN_RETRY_FAILED: frozenset[State] = frozenset({State.FAILED, State.STOPPED, State.ABORTED})
CAN_ROLL_BACK: frozenset[State] = ENDED
WATCHED_FOR_STALLS: frozenset[State] = frozenset(
    {State.UPDATE_REQUESTED, State.RUNNING, State.ABORTING, State.FINISHING}
)
"""The executor owes events: silence here for ``cmdb.stall_after_seconds`` is a stall (not while
the update waits for the operator's go-ahead)."""


def require(update_id: str, current: str, allowed: Collection[State], action: str) -> None:
    """Raise :class:`BadState` with a message an operator understands unless ``current`` is allowed."""
    if current in allowed:
        return
    wanted = " or ".join(sorted(allowed))
    hint = " (the pull has not finished yet)" if current == State.PULL_REQUESTED else ""
    raise BadState(f"cannot {action} update {update_id}: it is {current}{hint}; {action} needs {wanted}")
