"""The AsyncAPI 3 (3.1) document of the event bus, generated from the catalogue and the topology conventions.

Channels are the routing keys ``<project>.<area>.<event>.v<N>`` on the events exchange (what a
publisher addresses) and the consuming services' queues (what a consumer reads); operations say
which component sends each event and which receive it; the messages' payloads are the same JSON
Schemas as ``schemas/`` (their ``$defs`` moved to ``components.schemas``). ``hotupdate events docs``
writes it to ``asyncapi.yaml``; the tests run the official AsyncAPI parser on it.
"""

from __future__ import annotations

import json
from typing import Any

import yaml

from bus.contract.events import CATALOGUE, Event
from bus.topology import Topology

_AMQP_BINDING_VERSION = "0.3.0"

# A consuming component's queue: ``<ns>.<component>`` or, for a component that runs once per
# machine or per setting, ``<ns>.<component>.<instance>`` (see each component's service.py).
_QUEUE_INSTANCE: dict[str, tuple[str, str] | None] = {
    "file_pull": ("receiver", "the version receiver's name in the configuration (RSYNC_MAP)"),
    "file_push": ("receiver", "the version receiver's name in the configuration (RSYNC_MAP)"),
    "ops_executor": ("ops_manager", "the ops manager's name in the configuration"),
    "cmdb": None,
    "projection": None,
    "notifier": None,
}

_ROUTING_PARAMETERS = {
    "project": {"description": "the project's key (`ssss`): `[a-z0-9_]+`", "examples": ["ssss"]},
    "area": {"description": "the area code (`cn`): `[a-z0-9_]+`", "examples": ["cn"]},
}


def _channel_id(model: type[Event]) -> str:
    return f"{model.event_name}.v{model.event_version}"


def _message_ref(model: type[Event]) -> dict[str, str]:
    return {"$ref": f"#/components/messages/{model.type_name()}"}


def _lift_defs(schema: dict[str, Any], shared: dict[str, Any]) -> dict[str, Any]:
    """The schema with its ``$defs`` moved to ``shared`` and its references pointed there."""
    for name, definition in schema.pop("$defs", {}).items():
        if shared.setdefault(name, definition) != definition:
            raise ValueError(f"two events define {name} differently: rename one")
    schema.pop("$schema", None)
    schema.pop("$id", None)  # an $id would change what the references inside resolve against
    text = json.dumps(schema, ensure_ascii=False).replace('"#/$defs/', '"#/components/schemas/')
    lifted: dict[str, Any] = json.loads(text)
    return lifted


def render_asyncapi(schemas: dict[str, str], topology: Topology | None = None) -> str:
    """The AsyncAPI 3.1 document (YAML) for ``schemas`` (file name → JSON Schema text, as render_schemas)."""
    topology = topology or Topology()
    exchange = {"name": topology.events_exchange, "type": "topic", "durable": True, "autoDelete": False,
                "vhost": "/"}
    shared: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    consumed: dict[str, list[type[Event]]] = {}
    for model in CATALOGUE:
        name = model.type_name()
        payload = _lift_defs(json.loads(schemas[f"{name}.json"]), shared)
        summary = payload["description"].split("\n\n", 1)[0].replace("\n", " ")
        messages[name] = {
            "name": name,
            "title": model.__name__,
            "summary": summary,
            "contentType": "application/cloudevents+json",
            "correlationId": {"description": "the update's chain", "location": "$message.payload#/correlationid"},
            "headers": {
                "type": "object",
                "properties": {"ce-type": {"const": name}, "ce-source": {"type": "string"}},
            },
            "payload": payload,
            "bindings": {"amqp": {"contentEncoding": "utf-8", "messageType": name,
                                  "bindingVersion": _AMQP_BINDING_VERSION}},
        }
        channel = _channel_id(model)
        channels[channel] = {
            "address": f"{{project}}.{{area}}.{model.event_name}.v{model.event_version}",
            "title": f"{name} on {topology.events_exchange}",
            "description": f"Routing key of {name}: published to the topic exchange `{topology.events_exchange}`.",
            "parameters": _ROUTING_PARAMETERS,
            "messages": {name: _message_ref(model)},
            "bindings": {"amqp": {"is": "routingKey", "exchange": exchange, "bindingVersion": _AMQP_BINDING_VERSION}},
        }
        operations[f"{model.producer}.send.{channel}"] = {
            "action": "send",
            "title": f"{model.producer} publishes {name}",
            "channel": {"$ref": f"#/channels/{channel}"},
            "messages": [{"$ref": f"#/channels/{channel}/messages/{name}"}],
            "bindings": {"amqp": {"deliveryMode": 2, "mandatory": True, "bindingVersion": _AMQP_BINDING_VERSION}},
        }
        for component in model.consumers:
            consumed.setdefault(component, []).append(model)
    for component, models in consumed.items():
        channel, queue = f"queue.{component}", _queue_channel(component, topology, models)
        channels[channel] = queue
        operations[f"{component}.receive"] = {
            "action": "receive",
            "title": f"{component} consumes its queue",
            "channel": {"$ref": f"#/channels/{channel}"},
            "messages": [{"$ref": f"#/channels/{channel}/messages/{m.type_name()}"} for m in models],
            "bindings": {"amqp": {"ack": True, "bindingVersion": _AMQP_BINDING_VERSION}},
        }
    document = {
        "asyncapi": "3.1.0",
        "info": {
            "title": "hotupdate events",
            "version": "1.0.0",
            "description": (
                "Every step of a hot update as a CloudEvents 1.0 structured-JSON event on RabbitMQ. Generated "
                "from bus/contract/events.py by `hotupdate events docs`; events.md explains the envelope and the "
                "topology, docs/publishing.md how another team publishes. Publish persistent, with publisher "
                f"confirms, to `{topology.events_exchange}`; an event no queue is bound for goes to the "
                f"alternate exchange's queue `{topology.unroutable_queue}` (`hotupdate unroutable list`)."
            ),
        },
        "defaultContentType": "application/cloudevents+json",
        "servers": {
            "broker": {
                "host": "localhost:5672",
                "protocol": "amqp",
                "protocolVersion": "0.9.1",
                "description": "The RabbitMQ broker (or cluster) of a deployment; amqps on 5671 with TLS.",
            },
        },
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": dict(sorted(shared.items()))},
    }
    header = "# Generated by `hotupdate events docs` from bus/contract/events.py. Do not edit by hand.\n"
    plain = json.loads(json.dumps(document))  # no shared objects, so no YAML anchors
    return header + yaml.safe_dump(plain, sort_keys=False, allow_unicode=True, width=120)


def _queue_channel(component: str, topology: Topology, models: list[type[Event]]) -> dict[str, Any]:
    instance = _QUEUE_INSTANCE.get(component)
    if component not in _QUEUE_INSTANCE:
        raise ValueError(f"no queue naming known for consumer {component!r}: add it to _QUEUE_INSTANCE")
    address = topology.queue(component if instance is None else f"{component}.{{{instance[0]}}}")
    channel: dict[str, Any] = {
        "address": address,
        "title": f"{component}'s queue",
        "description": (
            f"Quorum queue of {component}, bound to `{topology.events_exchange}` by routing-key patterns "
            f"`<project>.*.<event>.*` for the events it handles; failed messages wait in "
            f"`{address}.retry.<ms>ms` and end, with the reason, in `{address}.parked`."
        ),
        "messages": {m.type_name(): _message_ref(m) for m in models},
        "bindings": {"amqp": {
            "is": "queue",
            "queue": {"name": address, "durable": True, "exclusive": False, "autoDelete": False, "vhost": "/"},
            "bindingVersion": _AMQP_BINDING_VERSION,
        }},
    }
    if instance is not None:
        channel["parameters"] = {instance[0]: {"description": instance[1]}}
    return channel
