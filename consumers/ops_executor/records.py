"""The executor's records as plain values: what the state store hands out and the pure rules take.

Kept apart from :mod:`consumers.ops_executor.state` (the ORM and its tables), so a rule such as
:mod:`~consumers.ops_executor.rollout` or :mod:`~consumers.ops_executor.hot_server` imports no storage.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from bus.contract.events import ServerResult

UpdateStatus = Literal["running", "waiting", "finished", "failed", "interrupted"]
BatchNext = Literal["continue", "stop", "await_confirm", "await_analysis", "done"]
ServerKey = tuple[str, str, str]  # (group, ip, server)
CdnKey = tuple[str, str]  # (cdn_root_url, cdn_dir)


@dataclass(frozen=True)
class UpdateRecord:
    """A snapshot of one update's row."""

    update_id: str
    status: UpdateStatus
    attempts: int
    request: str
    refused: bool
    final_result: bool | None
    final_data: str
    ok_count: int
    failed_count: int
    outcome: str | None = None
    not_run: tuple[str, ...] = ()
    waiting_batch: int | None = None
    emitted: int = 0


@dataclass(frozen=True)
class BatchRecord:
    """A finished batch: its counts and what was decided after it."""

    batch: int
    ok_count: int
    failed_count: int
    next: BatchNext
    finished_at: datetime


@dataclass(frozen=True)
class VerdictRecord:
    """An analysis tool's verdict on a batch (*analysis verdict*)."""

    batch: int
    verdict: str  # "pass" or "fail"
    reason: str
    link: str
    analysed_by: str
    received_at: datetime


@dataclass(frozen=True)
class AbortRecord:
    requested_by: str
    reason: str


@dataclass(frozen=True)
class ServerOutcome:
    """One game server's two results, as the seed reports them (``update_data`` and ``erl_data``)."""

    update: ServerResult
    erl: ServerResult

    @property
    def ok(self) -> bool:
        return self.update.status and self.erl.status
