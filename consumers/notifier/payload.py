"""The JSON body POSTed to a webhook: what happened, to which update, and the event that said so."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from bus.contract.envelope import Envelope, canonical_json
from bus.contract.events import Event
from consumers.notifier.triggers import Trigger
from domain.config import NotificationKind


class Notification(BaseModel):
    """One notification; its canonical JSON is the request body, identical on every attempt."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    notification_version: Literal[1] = 1
    kind: NotificationKind
    update_id: str
    project: str
    area: str
    update_type: str | None
    version: str | None
    summary: str
    occurred_at: datetime
    event: dict[str, Any]

    def body(self) -> bytes:
        """Canonical JSON (sorted keys, compact, UTF-8): the exact bytes that are sent and signed."""
        return canonical_json(self.model_dump(mode="json"))


def notification_for(envelope: Envelope, event: Event, trigger: Trigger[Any]) -> Notification:
    """The notification ``trigger`` makes of ``event``; update type and version come from the event if it has them."""
    update_type = getattr(event, "update_type", None)
    version = getattr(event, "version", None)
    return Notification(
        kind=trigger.classify(event),
        update_id=envelope.updateid,
        project=envelope.project,
        area=envelope.area,
        update_type=str(update_type) if update_type is not None else None,
        version=str(version) if version is not None else None,
        summary=trigger.summary(event),
        occurred_at=envelope.time,
        # The envelope as it travelled, so a receiver can link to it or check it against the event log.
        event=json.loads(envelope.to_bytes()),
    )
