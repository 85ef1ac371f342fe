"""Which events notify, as which kind, in which words: the trigger table.

One row per event class. A row says every kind the event can give (the notifier's queue is
bound to an event type only for projects with a webhook wanting one of them), how to tell
the kind of one event, and a one-line summary for people. Adding a notifying event is
adding its row, as *update stalled* is:

    UpdateStalled: Trigger.always("stalled", _stalled_summary),
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from bus.contract.events import Event, IpFinished, Outcome, PullFailed, PushFailed, UpdateCompleted, UpdateStalled
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


_KIND_OF_OUTCOME: Mapping[Outcome, NotificationKind] = {
    "succeeded": "completed",
    "failed": "failed",
    "stopped": "failed",  # stopped at a failing batch: the rollout failed
    "aborted": "aborted",
}
_WORDS_OF_OUTCOME: Mapping[Outcome, str] = {
    "succeeded": "completed", "failed": "failed", "stopped": "stopped", "aborted": "aborted",
}


def _completed_kind(event: UpdateCompleted) -> NotificationKind:
    return _KIND_OF_OUTCOME[event.outcome]


def _completed_summary(event: UpdateCompleted) -> str:
    counts = f" ({event.ok_count} ok, {event.failed_count} failed)" if event.ok_count or event.failed_count else ""
    unrun = f", {len(event.not_run)} not run" if event.not_run else ""
    return f"{event.update_type} {event.version} {_WORDS_OF_OUTCOME[event.outcome]}{counts}{unrun}: {event.final_data}"


def _stalled_summary(event: UpdateStalled) -> str:
    since = event.last_event_at.isoformat(timespec="seconds")
    silent = ", ".join(event.silent_targets) if event.silent_targets else "no target named"
    return (f"stalled: no event for {event.stalled_after_seconds:g}s (last at {since}); "
            f"{len(event.silent_targets)} silent: {silent}")


def _pull_failed_summary(event: PullFailed) -> str:
    return f"pull of {event.update_type} {event.version} failed ({event.reason}): {event.detail}"


def _push_failed_summary(event: PushFailed) -> str:
    targets = ", ".join(event.failed_targets) or "no target named"
    return f"push of {event.update_type} {event.version} failed to {targets}: {event.reason}"


def _ip_finished_summary(event: IpFinished) -> str:
    failed = sorted(name for name, r in event.update_data.items() if not r.status)
    failed += sorted(name for name, r in event.erl_data.items() if not r.status and name not in failed)
    return (f"{event.ip} ({event.group}) finished: {len(event.update_data)} servers"
            + (f", failed: {', '.join(failed)}" if failed else ", all ok"))


TRIGGERS: Mapping[type[Event], Trigger[Any]] = {
    UpdateCompleted: Trigger(frozenset({"completed", "failed", "aborted"}), _completed_kind, _completed_summary),
    PullFailed: Trigger.always("failed", _pull_failed_summary),
    PushFailed: Trigger.always("failed", _push_failed_summary),
    UpdateStalled: Trigger.always("stalled", _stalled_summary),
    IpFinished: Trigger.always("progress", _ip_finished_summary),
}
