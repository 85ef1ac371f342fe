"""Answering from the record: the events an update is reported with, and the whole answer again.

A request for an update already finished (or failed) is answered with the same events it had,
built from the state store's record: *update started*, each target's result, each batch's
*batch finished*, *update completed*. Nothing runs.
"""

from __future__ import annotations

from typing import Any

from bus.contract.envelope import Envelope
from bus.contract.events import UpdateCompleted, UpdateRequested, UpdateStarted
from bus.contract.registry import DEFAULT_REGISTRY
from consumers.ops_executor.hot_server import ip_units, ips_of
from consumers.ops_executor.records import UpdateRecord
from consumers.ops_executor.state import StateStore
from consumers.ops_executor.targets import CdnTargets, Serialized, ServerTargets, Targets, unique_targets


async def answer_from_record(store: StateStore, ops_manager: str, record: UpdateRecord, incoming: UpdateRequested,
                             out: Serialized) -> None:
    """The events of an update already finished (or failed) again, from its record: nothing runs."""
    # "failed" updates (refused, or unrecoverable) ran no target: their answer is the completion alone.
    if record.status == "failed":
        await out.emit(completed_event(record, incoming, []))
        return
    event = DEFAULT_REGISTRY.decode(Envelope.model_validate_json(record.request))  # what actually ran
    assert isinstance(event, UpdateRequested)
    await out.emit(started_event(event, ops_manager))
    targets: Targets
    if event.update_type == "hot_server":
        targets = ServerTargets(store, record.update_id, event)
    else:
        targets = CdnTargets(store, record.update_id, event)
    batches = await store.batches(record.update_id)
    data: list[dict[str, Any]] = []
    for number in range(1, targets.batch_count() + 1):
        data += await targets.report_recorded(number, out)
        if event.rollout is not None and number in batches:
            await out.emit(targets.finished(batches[number]), key=str(number))
    await out.emit(completed_event(record, event, data))


def started_event(event: UpdateRequested, ops_manager: str) -> UpdateStarted:
    """*update started* for ``event``: the IPs or CDN dirs it addresses, in the order they run."""
    return UpdateStarted(update_type=event.update_type, version=event.version, ops_manager=ops_manager,
                         ips=ips_of(ip_units(event.update_server_list or {})),
                         cdn_dirs=unique_targets(event.data or []))


def completed_event(record: UpdateRecord, event: UpdateRequested, data: list[dict[str, Any]]) -> UpdateCompleted:
    """*update completed* from the update's record (``data``: hot_client's per-dir list)."""
    final_result = bool(record.final_result)
    return UpdateCompleted(update_type=event.update_type, version=event.version,
                           final_result=final_result, final_data=record.final_data, data=data,
                           ok_count=record.ok_count, failed_count=record.failed_count,
                           outcome=record.outcome or ("succeeded" if final_result else "failed"),
                           not_run=list(record.not_run))
