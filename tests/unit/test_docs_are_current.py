"""events.md and schemas/ are generated from the catalogue; stale copies fail here."""

from __future__ import annotations

import json
import re
from pathlib import Path

from bus.contract.events import CATALOGUE
from bus.docs import render_events_md, render_schemas

ROOT = Path(__file__).resolve().parents[2]


def test_events_md_is_regenerated():
    assert (ROOT / "events.md").read_text(encoding="utf-8") == render_events_md(), (
        "events.md is stale: run `hotupdate events docs`"
    )


def test_json_schemas_are_regenerated_and_complete():
    expected = render_schemas()
    on_disk = {p.name: p.read_text(encoding="utf-8") for p in (ROOT / "schemas").glob("hotupdate.*.json")}
    assert on_disk == expected, "schemas/ is stale: run `hotupdate events docs`"
    assert set(expected) == {f"{m.type_name()}.json" for m in CATALOGUE}


def test_schema_patterns_accept_their_own_examples():
    # A cheap check that the exported patterns agree with the Python validators.
    for text in render_schemas().values():
        schema = json.loads(text)
        example = schema["examples"][0]
        assert re.fullmatch(schema["properties"]["project"]["pattern"], example["project"])
        assert example["type"] == schema["properties"]["type"]["const"]


def test_asyncapi_document_is_regenerated():
    from bus.asyncapi import render_asyncapi

    assert (ROOT / "asyncapi.yaml").read_text(encoding="utf-8") == render_asyncapi(render_schemas()), (
        "asyncapi.yaml is stale: run `hotupdate events docs`"
    )
