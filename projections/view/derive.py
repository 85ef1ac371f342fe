"""What the status view derives from an update's rows: its counts, its stage and its status.

Derived fields are a function of the rows alone, so they are computed once per update per batch,
after its events are folded, and not after each event.
"""

from __future__ import annotations

from typing import Any

from projections.models import BatchRow, CdnDirRow, FileRow, IpRow, RsyncTargetRow, ServerRow, UpdateRow, as_utc
from projections.view.rows import UpdateRows

STAGE_FIELDS: tuple[tuple[str, str, str], ...] = (
    # (stage, timestamp column, label) in the order a hot update goes through them
    ("pull_requested", "pull_requested_at", "files requested"),
    ("pulled", "pulled_at", "files pulled"),
    ("pull_failed", "pull_failed_at", "pull failed"),
    ("push_requested", "push_requested_at", "push requested"),
    ("pushed", "pushed_at", "files pushed"),
    ("push_failed", "push_failed_at", "push failed"),
    ("update_requested", "update_requested_at", "update requested"),
    ("started", "started_at", "update started"),
    ("abort_requested", "abort_requested_at", "abort requested"),
    ("completed", "completed_at", "completed"),
)
# The furthest stage present wins; at one step a success outranks a failure (a retried push).
_PRECEDENCE = (
    "completed", "started", "update_requested", "pushed", "push_failed", "push_requested",
    "pulled", "pull_failed", "pull_requested",
)
_TIMESTAMP = {stage: column for stage, column, _ in STAGE_FIELDS}
# Steps shown only when they happened (the others are shown as still to come).
OPTIONAL_STAGES = ("pull_failed", "push_failed", "abort_requested")
STATUSES = ("in_progress", "awaiting_confirm", "stalled", "succeeded", "failed", "stopped", "aborted")
RELEASE_GROUP = "release.announced"
"""The winners' group an announced release sets: the update's first stage until its pull is requested."""


def derive_stage(update: UpdateRow, *, results_reported: bool) -> tuple[str, str]:
    """(stage, status) from which stage timestamps are present; results imply the update started.

    Status: a completed update's outcome; else failed at a failed pull or push; else waiting
    for an operator's go-ahead; else stalled if a stall report is newer than its last progress.
    """
    present = {stage for stage in _PRECEDENCE if getattr(update, _TIMESTAMP[stage]) is not None}
    if results_reported:
        present.add("started")
    stage = next((s for s in _PRECEDENCE if s in present), "unknown")
    if stage == "unknown" and RELEASE_GROUP in (update.winners or {}):
        stage = "release_announced"  # a team's release waiting for its pull (auto or an operator's)
    stalled_at, progress_at = as_utc(update.stalled_at), as_utc(update.last_progress_at)
    if stage == "completed":
        status = update.outcome or ("succeeded" if update.final_result else "failed")
    elif stage in ("pull_failed", "push_failed"):
        status = "failed"
    elif update.awaiting_batch is not None:
        status = "awaiting_confirm"
    elif stalled_at is not None and (progress_at is None or stalled_at > progress_at):
        status = "stalled"
    else:
        status = "in_progress"
    return stage, status


def derive(update: UpdateRow, rows: UpdateRows) -> None:
    """Set the update's counts from its target rows, then who asked, its stage and its status.

    ``x is True``: a NULL counts as neither true nor false, as SQL's ``x IS TRUE`` would.
    """
    tables: dict[type[Any], dict[Any, Any]] = rows.tables
    ips: list[IpRow] = list(tables[IpRow].values())
    not_run_ips = {r.ip for r in ips if r.not_run is True}
    servers: list[ServerRow] = list(tables[ServerRow].values())
    update.servers_expected = sum(1 for r in servers if r.expected is True)
    update.servers_ok = sum(1 for r in servers if r.reported is True and r.ok is True)
    update.servers_failed = sum(1 for r in servers if r.reported is True and r.ok is False)
    update.servers_pending = sum(
        1 for r in servers if r.expected is True and r.reported is False and r.ip not in not_run_ips)
    update.servers_not_run = sum(1 for r in servers if r.reported is False and r.ip in not_run_ips)
    update.ips_expected = sum(1 for r in ips if r.expected is True)
    update.ips_ok = sum(1 for r in ips if r.reported is True and r.ok is True)
    update.ips_failed = sum(1 for r in ips if r.reported is True and r.ok is False)
    update.ips_pending = sum(1 for r in ips if r.expected is True and r.reported is False and r.not_run is False)
    update.ips_not_run = sum(1 for r in ips if r.reported is False and r.not_run is True)
    dirs: list[CdnDirRow] = list(tables[CdnDirRow].values())
    update.cdn_dirs_expected = sum(1 for r in dirs if r.expected is True)
    update.cdn_dirs_ok = sum(1 for r in dirs if r.status is True)
    update.cdn_dirs_failed = sum(1 for r in dirs if r.status is False)
    update.cdn_dirs_pending = sum(1 for r in dirs if r.expected is True and r.status is None and r.not_run is False)
    update.cdn_dirs_not_run = sum(1 for r in dirs if r.status is None and r.not_run is True)
    targets: list[RsyncTargetRow] = list(tables[RsyncTargetRow].values())
    update.targets_requested = sum(1 for r in targets if r.requested is True)
    update.targets_ok = sum(1 for r in targets if r.ok is True)
    update.targets_failed = sum(1 for r in targets if r.ok is False)
    update.files_count = len(tables[FileRow])
    _batches(update, list(tables[BatchRow].values()))
    update.requested_by = update.pull_requested_by or update.push_requested_by or update.update_requested_by
    reported = (
        update.ips_ok + update.ips_failed + update.servers_ok + update.servers_failed
        + update.cdn_dirs_ok + update.cdn_dirs_failed
    ) > 0
    update.stage, update.status = derive_stage(update, results_reported=reported)


def _batches(update: UpdateRow, rows: list[BatchRow]) -> None:
    """Batch counts, and which batch (if any) waits for a go-ahead: the one after a batch that
    finished with ``await_confirm``, not confirmed yet, with no later batch finished."""
    finished = [r for r in rows if r.finished_at is not None]
    update.batches_total = max((r.batches for r in finished if r.batches), default=None)
    update.batches_finished = len(finished)
    confirmed = {r.batch for r in rows if r.confirmed_by}
    last_finished = max((r.batch for r in finished), default=0)
    waiting = [
        r.batch + 1 for r in finished
        if r.next == "await_confirm" and r.batch == last_finished and r.batch + 1 not in confirmed
    ]
    update.awaiting_batch = waiting[0] if waiting and update.completed_at is None else None


def ip_counts(ip_row: IpRow, servers: list[ServerRow]) -> None:
    """An IP's counts of its servers' results, and whether it is ok."""
    ok = sum(1 for r in servers if r.reported and r.ok is True)
    failed = sum(1 for r in servers if r.reported and r.ok is False)
    ip_row.servers_ok, ip_row.servers_failed = ok, failed
    ip_row.ok = (failed == 0) if ip_row.reported else None
