"""Generating ``events.md``, the JSON Schemas and ``asyncapi.yaml`` from the catalogue, so the docs cannot drift.

``hotupdate events docs`` writes them; a test regenerates them in memory and fails when
the committed files differ.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

from bus.asyncapi import render_asyncapi
from bus.contract.envelope import EXTENSION_NAME_PATTERN, EXTENSION_SCHEMA, Envelope, routing_key
from bus.contract.events import CATALOGUE, RULES_BEYOND_JSON_SCHEMA, Event
from bus.contract.examples import EXAMPLES
from bus.contract.registry import make_envelope
from bus.topology import Topology

_EXAMPLE_BY_TYPE = {type(e): e for e in EXAMPLES}

# The prose part of events.md lives beside this module as a template (package data).
_HEADER = (Path(__file__).parent / "events_header.md").read_text(encoding="utf-8")


def _type_text(schema: dict[str, Any] | bool, defs: dict[str, Any]) -> str:
    if isinstance(schema, bool):
        return "any"
    if "$ref" in schema:
        return str(schema["$ref"]).rsplit("/", 1)[-1]
    if "anyOf" in schema:
        parts = [_type_text(s, defs) for s in schema["anyOf"]]
        return " or ".join(parts)
    if "enum" in schema:
        return " or ".join(json.dumps(v, ensure_ascii=False) for v in schema["enum"])
    if "const" in schema:
        return json.dumps(schema["const"], ensure_ascii=False)
    kind = schema.get("type", "any")
    if kind == "array":
        return f"list of {_type_text(schema.get('items', {}), defs)}"
    if kind == "object" and schema.get("additionalProperties") not in (None, False):
        keys = schema.get("propertyNames", {})
        key_text = _type_text(keys, defs) if keys else "string"
        return f"map {key_text} → {_type_text(schema['additionalProperties'], defs)}"
    extra = f" `{schema['pattern']}`" if "pattern" in schema else ""
    return f"{kind}{extra}"


def _fields_table(schema: dict[str, Any]) -> list[str]:
    defs = schema.get("$defs", {})
    required = set(schema.get("required", []))
    rows = ["| field | type | required | description |", "|---|---|---|---|"]
    for name, prop in schema.get("properties", {}).items():
        desc = prop.get("description", "")
        rows.append(f"| `{name}` | {_type_text(prop, defs)} | {'yes' if name in required else 'no'} | {desc} |")
    for def_name, sub in defs.items():
        if "properties" not in sub:
            continue
        rows.append(f"| *{def_name}* | | | |")
        sub_required = set(sub.get("required", []))
        for name, prop in sub["properties"].items():
            rows.append(
                f"| &nbsp;&nbsp;`{def_name}.{name}` | {_type_text(prop, defs)} | "
                f"{'yes' if name in sub_required else 'no'} | {prop.get('description', '')} |"
            )
    return rows


def example_envelope(model: type[Event]) -> Envelope:
    example = _EXAMPLE_BY_TYPE[model]
    return make_envelope(
        example,
        source=f"hotupdate/{model.producer}",
        updateid="350cf0ef-c12e-4bcc-d0df-369a09a4a357",
        project="ssss",
        area="cn",
        sequence=1,
        event_id="7d3f0a52-5a43-4f4b-9d43-0d2b3c1b5e10",
    ).model_copy(update={"time": _FIXED_TIME})


from datetime import UTC, datetime  # noqa: E402  (kept beside its one use)

_FIXED_TIME = datetime(2026, 11, 24, 6, 5, 0, tzinfo=UTC)


def render_events_md(topology: Topology | None = None) -> str:
    topology = topology or Topology()
    out = [_HEADER.format(exchange=topology.events_exchange)]
    for model in CATALOGUE:
        rk = routing_key("<project>", "<area>", model.event_name, model.event_version)
        anchor = model.type_name().replace(".", "")
        out.append(
            f"| [`{model.type_name()}`](#{anchor}) | `{rk}` | {model.producer} | {', '.join(model.consumers)} |\n"
        )
    for model in CATALOGUE:
        schema = model.model_json_schema()
        doc = inspect.cleandoc(model.__doc__ or "")
        out.append(f"\n### `{model.type_name()}`\n\n{doc}\n\n")
        out.append(f"- class `{model.__name__}`, version {model.event_version}\n")
        rk = routing_key("<project>", "<area>", model.event_name, model.event_version)
        out.append(f"- routing key `{rk}`\n")
        out.append(f"- producer: {model.producer}; consumers: {', '.join(model.consumers)}\n")
        out.append(f"- schema: [`schemas/{model.type_name()}.json`](schemas/{model.type_name()}.json)\n\n")
        out.append("\n".join(_fields_table(schema)) + "\n\n")
        body = json.dumps(example_envelope(model).model_dump(mode="json", exclude_none=True),
                          ensure_ascii=False, indent=2)
        out.append(f"Example:\n\n```json\n{body}\n```\n")
    return "".join(out)


def render_schemas() -> dict[str, str]:
    """File name → JSON Schema text, one per event type: the whole envelope with its typed ``data``."""
    files: dict[str, str] = {}
    envelope_schema = Envelope.model_json_schema()
    # Unknown CloudEvents extensions are carried (Envelope keeps them): any lowercase alphanumeric name,
    # a string, boolean or integer value. The known attributes' names fit the same pattern.
    envelope_schema["additionalProperties"] = EXTENSION_SCHEMA
    envelope_schema["propertyNames"] = {"pattern": EXTENSION_NAME_PATTERN}
    for model in CATALOGUE:
        data_schema = model.model_json_schema()
        schema = json.loads(json.dumps(envelope_schema))
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["$id"] = f"urn:hotupdate:schema:{model.type_name()}"
        schema["title"] = model.type_name()
        schema["description"] = inspect.cleandoc(model.__doc__ or "")
        if rules := RULES_BEYOND_JSON_SCHEMA.get(model.type_name()):
            schema["description"] += "\n\nAlso checked, beyond what JSON Schema can say: " + "; ".join(rules) + "."
        schema["properties"]["type"] = {"const": model.type_name()}
        defs = data_schema.pop("$defs", {})
        schema["properties"]["data"] = data_schema
        if defs:
            schema.setdefault("$defs", {}).update(defs)
        schema["examples"] = [example_envelope(model).model_dump(mode="json", exclude_none=True)]
        files[f"{model.type_name()}.json"] = json.dumps(schema, ensure_ascii=False, indent=2, sort_keys=True) + "\n"
    return files


def write_docs(root: Path) -> list[Path]:
    written = [root / "events.md", root / "asyncapi.yaml"]
    written[0].write_text(render_events_md(), encoding="utf-8")
    schemas = render_schemas()
    written[1].write_text(render_asyncapi(schemas), encoding="utf-8")
    schema_dir = root / "schemas"
    schema_dir.mkdir(exist_ok=True)
    for old in schema_dir.glob("hotupdate.*.json"):
        old.unlink()
    for name, text in schemas.items():
        path = schema_dir / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written
