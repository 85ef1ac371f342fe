"""Send an analysis verdict on a batch of a running update with plain pika (Argo's analysis step).

Usage: AMQP_URL=amqp://team.monitoring:secret@broker:5672/ PROJECT=ssss AREA=cn UPDATE_ID=<id> BATCH=1 \
       VERDICT=fail REASON="error rate 4.2%" python send_verdict_with_pika.py
Send it after *batch finished* (hotupdate.batch.finished.v2) with next "await_analysis" for BATCH
(docs/rollout.md): the update's *update requested* (v3) plan has analysis_timeout_seconds. The team's
broker user must be granted analysis.verdict for the project (docs/publishing.md).
"""

import json
import os
import uuid
from datetime import datetime, timezone

import pika

url = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
params = pika.URLParameters(url)
update_id = os.environ["UPDATE_ID"]
batch = int(os.environ.get("BATCH", "1"))
event = {
    "specversion": "1.0",
    # one id per decision: a re-sent verdict is the same event, de-duplicated by consumers
    "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{update_id}/analysis/{batch}/ssss-monitor")),
    "source": "monitoring/ssss-monitor",
    "type": "hotupdate.analysis.verdict.v1",
    "time": datetime.now(timezone.utc).isoformat(),
    "datacontenttype": "application/json",
    "dataschema": "urn:hotupdate:schema:hotupdate.analysis.verdict.v1",
    "updateid": update_id,
    "project": os.environ.get("PROJECT", "ssss"),
    "area": os.environ.get("AREA", "cn"),
    "sequence": int(os.environ.get("SEQUENCE", "1000")),  # above the update's events you read
    "correlationid": os.environ.get("CORRELATION_ID", update_id),
    "data": {
        "batch": batch,
        "verdict": os.environ.get("VERDICT", "pass"),
        "reason": os.environ.get("REASON", ""),
        "link": os.environ.get("LINK", ""),
        "analysed_by": "ssss-monitor",
    },
}
routing_key = f"{event['project']}.{event['area']}.analysis.verdict.v1"

connection = pika.BlockingConnection(params)
channel = connection.channel()
channel.confirm_delivery()
try:
    channel.basic_publish(
        exchange="hotupdate.events",
        routing_key=routing_key,
        body=json.dumps(event, ensure_ascii=False).encode("utf-8"),
        properties=pika.BasicProperties(
            delivery_mode=2,
            message_id=event["id"],
            content_type="application/cloudevents+json",
            user_id=params.credentials.username,
        ),
        mandatory=True,
    )
    print("published", event["id"], routing_key)
except pika.exceptions.ChannelClosedByBroker as exc:
    raise SystemExit(f"refused: {exc.reply_code} {exc.reply_text}")
finally:
    if connection.is_open:
        connection.close()
