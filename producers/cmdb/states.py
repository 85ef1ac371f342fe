"""The states of a hot update and which step may move it where.

Every state change goes through :func:`require`, so a redelivered or late event finds
the update already moved on and changes nothing. Later operator actions (abort,
retry, rollback, confirm) add their states and transitions here.
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
    COMPLETED = "completed"
    FAILED = "failed"


# What each step accepts as the update's current state.
CAN_PUSH: frozenset[State] = frozenset({State.PULLED, State.PUSH_FAILED})  # a failed push may be retried
AWAITING_PULL: frozenset[State] = frozenset({State.PULL_REQUESTED})
AWAITING_PUSH: frozenset[State] = frozenset({State.PUSH_REQUESTED})
AWAITING_EXECUTION: frozenset[State] = frozenset({State.UPDATE_REQUESTED, State.RUNNING})

FINAL: frozenset[State] = frozenset({State.PULL_FAILED, State.COMPLETED, State.FAILED})
IN_PROGRESS: frozenset[State] = frozenset(
    {State.PULL_REQUESTED, State.PUSH_REQUESTED, State.PUSHED, State.UPDATE_REQUESTED, State.RUNNING}
)
"""States that change without the operator doing anything (a script polls until it leaves them)."""


def require(update_id: str, current: str, allowed: Collection[State], action: str) -> None:
    """Raise :class:`BadState` with a message an operator understands unless ``current`` is allowed."""
    if current in allowed:
        return
    wanted = " or ".join(sorted(allowed))
    hint = " (the pull has not finished yet)" if current == State.PULL_REQUESTED else ""
    raise BadState(f"cannot {action} update {update_id}: it is {current}{hint}; {action} needs {wanted}")
