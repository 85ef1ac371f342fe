"""Announce a release to hotupdate with plain pika: no hotupdate package needed.

Usage: AMQP_URL=amqp://team.ci:secret@broker:5672/ python announce_release_with_pika.py
(the team's broker user must be granted release.announced for the project: docs/publishing.md)
"""

import json
import os
import uuid
from datetime import datetime, timezone

import pika

url = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
params = pika.URLParameters(url)
update_id = str(uuid.uuid4())  # the update its pull starts takes this id
event = {
    "specversion": "1.0",
    "id": str(uuid.uuid4()),
    "source": "ci/ssss-build",
    "type": "hotupdate.release.announced.v1",
    "time": datetime.now(timezone.utc).isoformat(),
    "datacontenttype": "application/json",
    "dataschema": "urn:hotupdate:schema:hotupdate.release.announced.v1",
    "updateid": update_id,
    "project": os.environ.get("PROJECT", "ssss"),
    "area": os.environ.get("AREA", "cn"),  # the area code
    "sequence": 0,
    "correlationid": update_id,
    "data": {
        "update_type": "hot_server",
        "version": os.environ.get("VERSION", "004200000"),
        "files": [{"file_name": "ebin/role_server.beam", "file_md5": "abe347d3fdff45f1078102c4637852a5"}],
        "announced_by": "ssss-build",
        "link": "https://ci.example.com/ssss/builds/4200",
    },
}
routing_key = f"{event['project']}.{event['area']}.release.announced.v1"

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
            user_id=params.credentials.username,  # your login: the broker refuses any other
        ),
        mandatory=True,
    )
    print("published", event["id"], routing_key)
except pika.exceptions.ChannelClosedByBroker as exc:
    raise SystemExit(f"refused: {exc.reply_code} {exc.reply_text}")  # e.g. 403: release.announced not granted
finally:
    if connection.is_open:
        connection.close()
