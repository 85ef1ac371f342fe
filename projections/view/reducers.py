"""The status view's reducers: one per event type, in :data:`REDUCERS` at the bottom.

A reducer is a function of the event and the rows it touches (:class:`projections.view.rows.ViewRows`):
it reads and sets their fields and nothing else, so the same events give the same rows whoever
folds them (the live ingest, a rebuild) and whatever the order (:mod:`projections.view.order`).
Counts, stage and status are derived afterwards (:mod:`projections.view.derive`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import ValidationError

from bus.contract.envelope import Envelope
from bus.contract.events import (
    AnalysisVerdict,
    BatchConfirmed,
    BatchFinished,
    CdnDirFinished,
    CdnTarget,
    Event,
    FilesPulled,
    FilesPushed,
    IpFinished,
    PullFailed,
    PullRequested,
    PushFailed,
    PushRequested,
    ReleaseAnnounced,
    UpdateAbortRequested,
    UpdateCompleted,
    UpdateRequested,
    UpdateStalled,
    UpdateStarted,
)
from domain.types import SERVER_GROUPS
from projections.models import UpdateRow
from projections.view.derive import RELEASE_GROUP, ip_counts
from projections.view.order import earliest, fits, identity, later, order_key, text, when, wins
from projections.view.rows import ViewRows
from projections.view.targets import batch_of, cdn_dir_of, file_of, ip_of, server_rows, target_of, target_result

Reducer = Callable[[ViewRows, UpdateRow, Envelope, Any], None]


def on_pull_requested(rows: ViewRows, update: UpdateRow, env: Envelope, event: PullRequested) -> None:
    identity(update, env, event.update_type, event.version, rank=3)
    update.pull_requested_at = earliest(update.pull_requested_at, when(env))
    if wins(update, "pull.requested", env):
        update.area_name = text(event.area_name)
        if event.client_type is not None:
            update.client_type = event.client_type
        update.pull_requested_by = event.requested_by
        update.pull_requested_source = text(env.source)


def on_release_announced(rows: ViewRows, update: UpdateRow, env: Envelope, event: ReleaseAnnounced) -> None:
    # The update its pull starts takes the announcement's update id: the release is its first stage.
    identity(update, env, event.update_type, event.version, rank=0)
    wins(update, RELEASE_GROUP, env)


def on_analysis_verdict(rows: ViewRows, update: UpdateRow, env: Envelope, event: AnalysisVerdict) -> None:
    """Logged and counted with the update's events; the executor acts on it, the CMDB shows it."""


def on_files_pulled(rows: ViewRows, update: UpdateRow, env: Envelope, event: FilesPulled) -> None:
    identity(update, env, event.update_type, event.version, rank=1)
    update.pulled_at = earliest(update.pulled_at, when(env))
    if wins(update, "files.pulled", env):
        update.source_dir = text(event.source_dir)
        update.backup_dir = text(event.backup_dir)
        update.total_bytes = event.total_bytes
    for entry in event.files:
        file_of(rows, update.updateid, entry, env, rank=1, flag="pulled")


def on_pull_failed(rows: ViewRows, update: UpdateRow, env: Envelope, event: PullFailed) -> None:
    identity(update, env, event.update_type, event.version, rank=1)
    update.pull_failed_at = earliest(update.pull_failed_at, when(env))
    if wins(update, "pull.failed", env):
        update.pull_failure = text(f"{event.reason}: {event.detail}")


def on_push_requested(rows: ViewRows, update: UpdateRow, env: Envelope, event: PushRequested) -> None:
    identity(update, env, event.update_type, event.version, rank=4)
    update.push_requested_at = earliest(update.push_requested_at, when(env))
    won = wins(update, "push.requested", env)
    if won:
        update.push_requested_by = event.requested_by
    for entry in event.files:
        file_of(rows, update.updateid, entry, env, rank=2, flag="pushed")
    for target in event.targets:
        row = target_of(rows, update.updateid, target.name)
        row.requested = True
        if won and row.result_key is None:  # a reported result carries the address it was sent to
            row.ip, row.port = fits(target.ip, 128, "IP"), target.port
            row.module, row.user = target.module, target.user


def on_files_pushed(rows: ViewRows, update: UpdateRow, env: Envelope, event: FilesPushed) -> None:
    identity(update, env, event.update_type, event.version, rank=1)
    update.pushed_at = earliest(update.pushed_at, when(env))
    for result in event.targets:
        target_result(rows, update.updateid, result, env)


def on_push_failed(rows: ViewRows, update: UpdateRow, env: Envelope, event: PushFailed) -> None:
    identity(update, env, event.update_type, event.version, rank=1)
    update.push_failed_at = earliest(update.push_failed_at, when(env))
    if wins(update, "push.failed", env):
        update.push_failure = text(event.reason)
    reported = set()
    for result in event.targets:
        target_result(rows, update.updateid, result, env)
        reported.add(result.name)
    key = order_key(env)
    for name in event.failed_targets:
        if name in reported or not name or len(name) > 64:
            continue
        row = target_of(rows, update.updateid, text(name))
        if later(row.result_key, key):
            row.ok, row.error, row.reported_at, row.result_key = False, "named as failed", when(env), key


def on_update_requested(rows: ViewRows, update: UpdateRow, env: Envelope, event: UpdateRequested) -> None:
    identity(update, env, event.update_type, event.version, rank=5)
    update.update_requested_at = earliest(update.update_requested_at, when(env))
    if wins(update, "update.requested", env):
        update.ops_manager = event.ops_manager
        update.update_requested_by = event.requested_by
        update.update_requested_source = text(env.source)
        update.erlang_cmd_list = [text(c) for c in event.erlang_cmd_list]
        if event.client_type is not None:
            update.client_type = event.client_type
        update.rollout = event.rollout.model_dump(mode="json") if event.rollout else None
        update.parent_updateid, update.relation = event.parent_id, event.relation
    for entry in event.update_file_list:
        file_of(rows, update.updateid, entry, env, rank=3, flag="in_update")
    for group, hosts in (event.update_server_list or {}).items():
        for ip, servers in hosts.items():
            ip_row = ip_of(rows, update.updateid, ip)
            ip_row.expected = True
            ip_row.group = ip_row.group or group  # what the IP itself reported outranks the request
            for row in server_rows(rows, update.updateid, ip, servers):
                row.expected = True
                row.group = row.group or group
    for target in event.data or []:
        cdn_dir_of(rows, update.updateid, target.cdn_root_url, target.cdn_dir).expected = True


def on_update_started(rows: ViewRows, update: UpdateRow, env: Envelope, event: UpdateStarted) -> None:
    identity(update, env, event.update_type, event.version, rank=2)
    update.started_at = earliest(update.started_at, when(env))
    if wins(update, "update.started", env) and update.ops_manager is None:
        update.ops_manager = event.ops_manager
    for ip in event.ips:
        ip_of(rows, update.updateid, ip).expected = True
    for target in event.cdn_dirs:
        cdn_dir_of(rows, update.updateid, target.cdn_root_url, target.cdn_dir).expected = True


def on_cdn_dir_finished(rows: ViewRows, update: UpdateRow, env: Envelope, event: CdnDirFinished) -> None:
    identity(update, env, None, event.version, rank=1)
    row = cdn_dir_of(rows, update.updateid, event.cdn_root_url, event.cdn_dir)
    key = order_key(env, rank=2)  # the dir's own report outranks the summary in update.completed
    if later(row.result_key, key):
        row.status, row.data, row.reported_by = event.status, text(event.data) or None, CdnDirFinished.type_name()
        row.finished_at, row.result_key = when(env), key


def on_ip_finished(rows: ViewRows, update: UpdateRow, env: Envelope, event: IpFinished) -> None:
    identity(update, env, None, event.version, rank=1)
    key, at = order_key(env), when(env)
    ip_row = ip_of(rows, update.updateid, event.ip)
    if later(ip_row.result_key, key):
        ip_row.reported, ip_row.group = True, event.group
        ip_row.finished_at, ip_row.result_key = at, key
    update_data, erl_data, group = event.update_data, event.erl_data, event.group
    # usually both name the same servers: then one sort, no sets
    names = update_data.keys() if update_data.keys() == erl_data.keys() else set(update_data) | set(erl_data)
    servers = sorted(names)
    for server, row in zip(servers, server_rows(rows, update.updateid, event.ip, servers), strict=True):
        result_key = row.result_key
        if result_key is not None and key < result_key:  # not later(result_key, key)
            continue
        upd, erl = update_data.get(server), erl_data.get(server)
        row.reported, row.group = True, group
        # ok when nothing reported for it failed (the seed: update, then Erlang commands); statuses are bools
        row.ok = (upd is None or upd.status) and (erl is None or erl.status)
        if upd is None:
            row.update_status = row.update_text = None
        else:
            row.update_status, row.update_text = upd.status, text(upd.data)
        if erl is None:
            row.erl_status = row.erl_text = None
        else:
            row.erl_status, row.erl_text = erl.status, text(erl.data)
        row.finished_at, row.result_key = at, key
    ip_counts(ip_row, list(rows.ip_servers(update.updateid, ip_row.ip)))


def on_update_completed(rows: ViewRows, update: UpdateRow, env: Envelope, event: UpdateCompleted) -> None:
    identity(update, env, event.update_type, event.version, rank=1)
    update.completed_at = earliest(update.completed_at, when(env))
    if wins(update, "update.completed", env):
        update.final_result = event.final_result
        update.final_data = text(event.final_data)
        update.completed_ok_count = event.ok_count
        update.completed_failed_count = event.failed_count
        update.outcome = event.outcome
        update.not_run = [text(t) for t in event.not_run]
    for kind, (first, second) in _not_run_targets(event.not_run):
        if kind == "ip":
            ip_of(rows, update.updateid, first).not_run = True
        else:
            cdn_dir_of(rows, update.updateid, first, second).not_run = True
    key = order_key(env, rank=1)
    for target, status, data in _completed_dirs(event.data):
        row = cdn_dir_of(rows, update.updateid, target.cdn_root_url, target.cdn_dir)
        if later(row.result_key, key):
            row.status, row.data, row.reported_by = status, data, UpdateCompleted.type_name()
            row.finished_at, row.result_key = when(env), key


def _not_run_targets(names: list[str]) -> list[tuple[str, tuple[str, str]]]:
    """The completion's ``not_run`` names: ``ip``, ``ip/group`` or ``cdn_root_url/cdn_dir``; others are skipped."""
    out: list[tuple[str, tuple[str, str]]] = []
    for name in names:
        left, _, right = name.partition("/")
        if not right or right in SERVER_GROUPS:
            try:
                out.append(("ip", (str(ipaddress.ip_address(left)), "")))
            except ValueError:
                continue
            continue
        try:
            target = CdnTarget.model_validate({"cdn_root_url": left, "cdn_dir": right})
        except ValidationError:
            continue
        out.append(("cdn", (target.cdn_root_url, target.cdn_dir)))
    return out


def on_batch_finished(rows: ViewRows, update: UpdateRow, env: Envelope, event: BatchFinished) -> None:
    row = batch_of(rows, update.updateid, event.batch)
    key = order_key(env)
    if later(row.result_key, key):
        row.batches, row.next = event.batches, event.next
        row.ok_count, row.failed_count = event.ok_count, event.failed_count
        row.ips = list(event.ips)
        row.cdn_dirs = [f"{t.cdn_root_url}/{t.cdn_dir}" for t in event.cdn_dirs]
        row.finished_at, row.result_key = when(env), key


def on_batch_confirmed(rows: ViewRows, update: UpdateRow, env: Envelope, event: BatchConfirmed) -> None:
    row = batch_of(rows, update.updateid, event.batch)
    key = order_key(env)
    if later(row.confirm_key, key):
        row.confirmed_by, row.confirmed_at, row.confirm_key = event.confirmed_by, when(env), key


def on_update_abort_requested(rows: ViewRows, update: UpdateRow, env: Envelope, event: UpdateAbortRequested
                              ) -> None:
    update.abort_requested_at = earliest(update.abort_requested_at, when(env))
    if wins(update, "update.abort_requested", env):
        update.abort_requested_by, update.abort_reason = event.requested_by, text(event.reason) or None


def on_update_stalled(rows: ViewRows, update: UpdateRow, env: Envelope, event: UpdateStalled) -> None:
    if wins(update, "update.stalled", env):  # the latest report says who is still silent
        update.stalled_at = when(env)
        update.silent_targets = [text(t) for t in event.silent_targets]
        update.stalled_after_seconds = event.stalled_after_seconds


def _completed_dirs(data: list[dict[str, Any]]) -> list[tuple[CdnTarget, bool, str | None]]:
    """The seed's final hot_client list (``{cdn_root_url, cdn_dir, status}``); malformed entries are skipped."""
    out = []
    for item in data:
        status = item.get("status")
        if not isinstance(status, bool):
            continue
        try:
            target = CdnTarget.model_validate(
                {"cdn_root_url": item.get("cdn_root_url"), "cdn_dir": item.get("cdn_dir")}
            )
        except ValidationError:
            continue
        note = item.get("data")
        out.append((target, status, text(note) if isinstance(note, str) and note else None))
    return out


REDUCERS: Mapping[type[Event], Reducer] = {
    PullRequested: on_pull_requested,
    FilesPulled: on_files_pulled,
    PullFailed: on_pull_failed,
    PushRequested: on_push_requested,
    FilesPushed: on_files_pushed,
    PushFailed: on_push_failed,
    UpdateRequested: on_update_requested,
    UpdateStarted: on_update_started,
    CdnDirFinished: on_cdn_dir_finished,
    IpFinished: on_ip_finished,
    BatchFinished: on_batch_finished,
    BatchConfirmed: on_batch_confirmed,
    UpdateAbortRequested: on_update_abort_requested,
    UpdateCompleted: on_update_completed,
    UpdateStalled: on_update_stalled,
    ReleaseAnnounced: on_release_announced,
    AnalysisVerdict: on_analysis_verdict,
}
"""Keyed by the newest model of each event: the registry upcasts older versions before they get here."""
