"""Publish one hotupdate event with plain pika: no hotupdate package needed.

Usage: AMQP_URL=amqp://team:secret@broker:5672/ python publish_with_pika.py
"""

import json
import os
import uuid
from datetime import datetime, timezone

import pika

url = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
params = pika.URLParameters(url)
update_id = str(uuid.uuid4())
event = {
    "specversion": "1.0",
    "id": str(uuid.uuid4()),
    "source": "tools/release-bot",
    "type": "hotupdate.pull.requested.v1",
    "time": datetime.now(timezone.utc).isoformat(),
    "datacontenttype": "application/json",
    "dataschema": "urn:hotupdate:schema:hotupdate.pull.requested.v1",
    "updateid": update_id,
    "project": "snqxz",
    "area": "tw",
    "sequence": 0,
    "correlationid": update_id,
    "data": {"update_type": "hot_server", "version": "004200000", "area_name": "台湾", "requested_by": "release-bot"},
}
routing_key = f"{event['project']}.{event['area']}.pull.requested.v1"

connection = pika.BlockingConnection(params)
channel = connection.channel()
channel.confirm_delivery()  # basic_publish now waits for the broker's ack
try:
    channel.basic_publish(
        exchange="hotupdate.events",
        routing_key=routing_key,
        body=json.dumps(event, ensure_ascii=False).encode("utf-8"),
        properties=pika.BasicProperties(
            delivery_mode=2,  # persistent
            message_id=event["id"],
            content_type="application/cloudevents+json",
            # your login: the broker refuses any other, and consumers park an event without one
            user_id=params.credentials.username,
        ),
        mandatory=True,
    )
    print("published", event["id"], routing_key)
except pika.exceptions.UnroutableError:
    raise SystemExit("returned by the broker: not routable")
except pika.exceptions.NackError:
    raise SystemExit("the broker did not accept the event")
except pika.exceptions.ChannelClosedByBroker as exc:
    raise SystemExit(f"refused: {exc.reply_code} {exc.reply_text}")  # e.g. 403 for another project's key
finally:
    if connection.is_open:
        connection.close()
