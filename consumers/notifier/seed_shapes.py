"""The seed document's callback JSON, for a webhook with ``format: seed`` (an old CMDB during a migration).

The seed's ops manager called the CMDB once per finished IP and once at the end; these are those
bodies, field for field, made from *IP finished* and *update completed*. Other events have no
seed shape and are not sent to such a webhook. docs/migration.md maps the fields.
"""

from __future__ import annotations

from typing import Any

from bus.contract.envelope import Envelope, canonical_json
from bus.contract.events import Event, IpFinished, UpdateCompleted


def seed_callback(envelope: Envelope, event: Event) -> dict[str, Any] | None:
    """The seed's callback for ``event``, or None when the seed had none for it."""
    if isinstance(event, IpFinished):
        return {
            "ip": {event.ip: {
                "update_data": {name: r.model_dump(mode="json") for name, r in event.update_data.items()},
                "erl_data": {name: r.model_dump(mode="json") for name, r in event.erl_data.items()},
            }},
            "uuid": envelope.updateid,
            "update_type": "hot_server",
            "version": event.version,
        }
    if isinstance(event, UpdateCompleted):
        if event.update_type == "hot_client":
            return {"update_type": "hot_client", "data": list(event.data), "uuid": envelope.updateid,
                    "version": event.version}
        return {"final_result": event.final_result, "final_data": event.final_data, "uuid": envelope.updateid,
                "update_type": event.update_type, "version": event.version}
    return None


def seed_body(envelope: Envelope, event: Event) -> bytes | None:
    """The callback as the request body (canonical JSON, so every attempt sends and signs the same bytes)."""
    callback = seed_callback(envelope, event)
    return None if callback is None else canonical_json(callback)
