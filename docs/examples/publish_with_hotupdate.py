"""Publish one hotupdate event with the hotupdate package's sync publisher (validated first)."""

import os
import uuid

from bus.contract.events import PullRequested
from bus.contract.registry import make_envelope
from bus.publisher import PublishError, SyncPublisher

url = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
event = PullRequested(update_type="hot_server", version="004200000", area_name="台湾", requested_by="release-bot")
envelope = make_envelope(event, source="tools/release-bot", updateid=str(uuid.uuid4()), project="snqxz", area="tw")

# declare=False: a team's user may write to the events exchange but not declare anything
with SyncPublisher(url, declare=False) as publisher:
    try:
        publisher.publish(envelope)  # returns once the broker confirmed it
    except PublishError as exc:
        raise SystemExit(f"not published: {exc}")
print("published", envelope.id, envelope.routing_key)
