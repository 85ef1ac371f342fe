"""asyncapi.yaml passes the official AsyncAPI parser, which does fail on a broken copy."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bus.asyncapi import render_asyncapi
from bus.contract.events import CATALOGUE
from bus.docs import render_schemas
from tests.asyncapi_support import parse_asyncapi

pytestmark = [pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


def test_the_generated_asyncapi_document_is_valid_for_the_official_parser():
    valid, lines = parse_asyncapi(ROOT / "asyncapi.yaml")
    errors = [line for line in lines if line.get("severity") == 0]
    assert valid and errors == [], errors
    assert lines[-1]["result"] == "valid"
    assert lines[-1]["operations"] >= len(CATALOGUE)  # a send for each type, a receive for each consumer


def test_the_parser_refuses_a_broken_copy(tmp_path):
    document = yaml.safe_load(render_asyncapi(render_schemas()))
    operation = next(iter(document["operations"].values()))
    operation["channel"] = {"$ref": "#/channels/no.such.channel"}
    del document["channels"]["pull.requested.v1"]["address"]
    document["components"]["messages"]["hotupdate.pull.requested.v1"]["payload"]["type"] = "no-such-type"
    broken = tmp_path / "asyncapi.yaml"
    broken.write_text(yaml.safe_dump(document, allow_unicode=True), encoding="utf-8")
    valid, lines = parse_asyncapi(broken)
    assert not valid
    messages = " ".join(str(line.get("message")) for line in lines if line.get("severity") == 0)
    assert "no.such.channel" in messages or "reference" in messages.lower(), messages
