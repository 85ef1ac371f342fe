"""Which events notify, as which kind, in which words: the trigger table.

One row per event class. A row says every kind the event can give (the notifier's queue is
bound to an event type only for projects with a webhook wanting one of them), how to tell
the kind of one event, and a one-line summary for people. Adding a notifying event, such
as issue 9's *update stalled*, is adding its row:

    UpdateStalled: Trigger.always("stalled", _stalled_summary),
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from bus.events import Event, PullFailed, PushFailed, UpdateCompleted
from domain.config import NotificationKind

E = TypeVar("E", bound=Event)

SUMMARY_LIMIT = 500  # a summary is a line for a chat message or a pager, not a report


@dataclass(frozen=True)
class Trigger(Generic[E]):
    kinds: frozenset[NotificationKind]
    classify: Callable[[E], NotificationKind]
    describe: Callable[[E], str]

    @classmethod
    def always(cls, kind: NotificationKind, describe: Callable[[E], str]) -> Trigger[E]:
        """An event that always notifies as ``kind``."""
        return cls(frozenset({kind}), lambda _event: kind, describe)

    def summary(self, event: E) -> str:
        text = " ".join(self.describe(event).split())  # one line, whatever the event's text holds
        return text if len(text) <= SUMMARY_LIMIT else text[: SUMMARY_LIMIT - 1] + "…"


def _completion_outcome(event: UpdateCompleted) -> str:
    # Issue 9's *update completed* says how an unsuccessful update ended (failed, stopped,
    # aborted); before it, only final_result did. Read it when the event has it.
    outcome = getattr(event, "outcome", None)
    if not event.final_result and isinstance(outcome, str) and outcome:
        return outcome
    return "completed" if event.final_result else "failed"


def _completed_kind(event: UpdateCompleted) -> NotificationKind:
    outcome = _completion_outcome(event)
    if outcome == "completed":
        return "completed"
    if outcome == "aborted":
        return "aborted"
    return "failed"  # failed, or stopped at a failing batch


def _completed_summary(event: UpdateCompleted) -> str:
    counts = f" ({event.ok_count} ok, {event.failed_count} failed)" if event.ok_count or event.failed_count else ""
    not_run = getattr(event, "not_run", None) or []
    unrun = f", {len(not_run)} not run" if not_run else ""
    return f"{event.update_type} {event.version} {_completion_outcome(event)}{counts}{unrun}: {event.final_data}"


def _pull_failed_summary(event: PullFailed) -> str:
    return f"pull of {event.update_type} {event.version} failed ({event.reason}): {event.detail}"


def _push_failed_summary(event: PushFailed) -> str:
    targets = ", ".join(event.failed_targets) or "no target named"
    return f"push of {event.update_type} {event.version} failed to {targets}: {event.reason}"


TRIGGERS: Mapping[type[Event], Trigger[Any]] = {
    UpdateCompleted: Trigger(frozenset({"completed", "failed", "aborted"}), _completed_kind, _completed_summary),
    PullFailed: Trigger.always("failed", _pull_failed_summary),
    PushFailed: Trigger.always("failed", _push_failed_summary),
}
