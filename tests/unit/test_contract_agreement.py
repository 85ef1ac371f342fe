"""The published JSON Schemas and the project's own validator give every document the same verdict.

Documents are generated from each schema (a small generator below: hypothesis-jsonschema 0.23 does
not run on this hypothesis) and then mutated the ways a
hand-written publisher goes wrong: a required field dropped, a value of the wrong JSON type, an
integer out of range, a blank string, an unknown field. Each document is judged twice: by a JSON
Schema 2020-12 validator (patterns as ECMA-262 regexes, as the specification says, and the
formats checked) and by ``Envelope.from_bytes`` + ``DEFAULT_REGISTRY.decode``, which every
consumer runs. The verdicts must agree, except for the rules between two fields that JSON Schema
cannot state (``RULES_BEYOND_JSON_SCHEMA``, also written in those schemas' descriptions).
"""

from __future__ import annotations

import copy
import json
from datetime import UTC, timedelta, timezone
from functools import cache
from typing import Any

import jsonschema
import pytest
import regress
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bus.contract.envelope import Envelope, EnvelopeError
from bus.contract.events import RULES_BEYOND_JSON_SCHEMA, UpdateRequested
from bus.contract.examples import EXAMPLES, HOT_CLIENT_REQUEST
from bus.contract.registry import DEFAULT_REGISTRY, event_data
from bus.docs import render_schemas

SCHEMAS = {name.removesuffix(".json"): json.loads(text) for name, text in render_schemas().items()}
_EXAMPLE = {name: schema["examples"][0] for name, schema in SCHEMAS.items()}
_DROP = object()  # a mutation: the field is removed


@cache
def _ecma(pattern: str) -> Any:
    return regress.Regex(pattern)


def _pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Any:
    # JSON Schema patterns are ECMA-262 regexes: '$' is the end of the text, not "before a last
    # newline" as in Python's re (what jsonschema uses by default).
    if validator.is_type(instance, "string") and _ecma(pattern).find(instance) is None:
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


_FORMATS = jsonschema.FormatChecker(["date-time", "ipv4", "ipv6"])
_Validator = jsonschema.validators.extend(jsonschema.Draft202012Validator, {"pattern": _pattern})


@cache
def _schema_validator(type_name: str) -> Any:
    return _Validator(SCHEMAS[type_name], format_checker=_FORMATS)


def schema_verdict(type_name: str, document: Any) -> str | None:
    """None if the schema accepts the document, else the first error."""
    error = jsonschema.exceptions.best_match(_schema_validator(type_name).iter_errors(document))
    return None if error is None else f"{list(error.absolute_path)}: {error.message}"


def project_verdict(document: Any) -> str | None:
    """None if a consumer accepts the document, else why it parks it."""
    body = json.dumps(document, ensure_ascii=False).encode("utf-8")
    try:
        DEFAULT_REGISTRY.decode(Envelope.from_bytes(body))
    except EnvelopeError as exc:
        return str(exc)
    return None


def assert_same_verdict(type_name: str, document: Any) -> None:
    by_schema, by_project = schema_verdict(type_name, document), project_verdict(document)
    rules = RULES_BEYOND_JSON_SCHEMA.get(type_name, ())
    if by_schema is None and by_project is not None and any(rule in by_project for rule in rules):
        return  # a rule between two fields: stated in the schema's description only
    assert (by_schema is None) == (by_project is None), (
        f"{type_name}: schema says {by_schema or 'valid'}, validator says {by_project or 'valid'}\n"
        f"{json.dumps(document, ensure_ascii=False)}"
    )


# --- documents from a schema ----------------------------------------------------------
# Enough of JSON Schema for what the generator writes: type, const, enum, pattern, lengths, bounds,
# items, properties/required/additionalProperties, anyOf, $ref. Rules between fields (if/then, not,
# allOf) are not generated for: a document breaking them is judged like any other, by both.


def _resolve(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = root["$defs"][schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def from_schema(schema: Any, root: dict[str, Any] | None = None) -> st.SearchStrategy[Any]:
    root = root if root is not None else schema
    if schema is True or schema == {}:
        return st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                            lambda inner: st.lists(inner, max_size=2)
                            | st.dictionaries(st.text(max_size=3), inner, max_size=2), max_leaves=4)
    schema = _resolve(schema, root)
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if "anyOf" in schema and "type" not in schema:
        return st.one_of([from_schema(s, root) for s in schema["anyOf"]])
    kind = schema.get("type")
    if isinstance(kind, list):
        return st.one_of([from_schema({**schema, "type": k}, root) for k in kind])
    if kind == "string":
        return _strings(schema)
    if kind == "integer":
        return st.integers(schema.get("minimum"), schema.get("maximum"))
    if kind == "number":
        low = schema.get("minimum", schema.get("exclusiveMinimum"))
        return st.floats(low, schema.get("maximum"), allow_nan=False, allow_infinity=False,
                         exclude_min="exclusiveMinimum" in schema)
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    if kind == "array":
        return st.lists(from_schema(schema.get("items", {}), root), min_size=schema.get("minItems", 0),
                        max_size=max(schema.get("minItems", 0), 3))
    if kind == "object":
        return _objects(schema, root)
    raise AssertionError(f"no generator for {schema}")


def _strings(schema: dict[str, Any]) -> st.SearchStrategy[str]:
    if schema.get("format") == "date-time":
        return st.datetimes(timezones=st.sampled_from([UTC, timezone(timedelta(hours=8))])).map(
            lambda t: t.isoformat())
    if "pattern" in schema:
        text = st.from_regex(schema["pattern"], fullmatch=True)
    elif "anyOf" in schema:  # IP addresses
        text = st.ip_addresses().map(str)
    else:
        text = st.text(max_size=12)
    low, high = schema.get("minLength", 0), schema.get("maxLength")
    return text.filter(lambda t: len(t) >= low and (high is None or len(t) <= high))


@st.composite
def _objects(draw: st.DrawFn, schema: dict[str, Any], root: dict[str, Any]) -> dict[Any, Any]:
    out: dict[Any, Any] = {}
    required = set(schema.get("required", ()))
    for name, sub in schema.get("properties", {}).items():
        if name in required or draw(st.booleans()):
            out[name] = draw(from_schema(sub, root))
    extra = schema.get("additionalProperties", False)
    if (extra is not False and "properties" not in schema) or (isinstance(extra, dict) and draw(st.booleans())):
        names = from_schema({"type": "string", **schema.get("propertyNames", {})}, root)
        for name in draw(st.lists(names, max_size=2)):
            out.setdefault(name, draw(from_schema(extra if isinstance(extra, dict) else {}, root)))
    return out


# The request's "fits its update type" rule (if/then/else) is rarely met by chance: half the
# generated requests take the rule's fields from a hot_server or a hot_client example.
_HOT_SERVER = next(e for e in EXAMPLES if isinstance(e, UpdateRequested))
_KIND_FIELDS = ("update_type", "update_server_list", "data", "erlang_cmd_list", "client_type")
_KINDS = [{k: v for k, v in event_data(e).items() if k in _KIND_FIELDS} for e in (_HOT_SERVER, HOT_CLIENT_REQUEST)]


def documents(type_name: str) -> st.SearchStrategy[Any]:
    generated = from_schema(SCHEMAS[type_name])
    if not type_name.startswith("hotupdate.update.requested."):
        return generated

    def fitted(pair: tuple[dict[str, Any], dict[str, Any]]) -> dict[str, Any]:
        document, kind = pair
        data = {k: v for k, v in document["data"].items() if k not in _KIND_FIELDS}
        return {**document, "data": {**data, **kind}}

    return generated | st.tuples(generated, st.sampled_from(_KINDS)).map(fitted)


# --- mutations ----------------------------------------------------------------------


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            out += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            out += _paths(item, (*prefix, index))
    return out


# What a hand-written publisher gets wrong: a number as text, a boolean for a number, a Unix time, a
# value past the bounds (2**63 overflowed a database column), a blank, nothing at all.
REPLACEMENTS: list[Any] = [
    "1", "", " ", "\t\n", True, False, 0, 1, -1, 1.0, 1.5, 1700000000, 2**31, 2**53, 2**63, None, [], {}, [""],
    "2026-11-24T06:05:00", "2026-02-30T06:05:00Z", "a\n", "..",
]


def _parent_and_key(document: Any, path: tuple[Any, ...]) -> tuple[Any, Any]:
    parent = document
    for step in path[:-1]:
        parent = parent[step]
    return parent, path[-1]


@st.composite
def mutated(draw: st.DrawFn, type_name: str) -> Any:
    document = copy.deepcopy(draw(documents(type_name)))
    paths = [p for p in _paths(document) if p]
    path = draw(st.sampled_from(paths))
    parent, key = _parent_and_key(document, path)
    action = draw(st.sampled_from(["drop", "replace", "extra"]))
    if action == "drop":
        del parent[key]
    elif action == "replace":
        parent[key] = draw(st.sampled_from(REPLACEMENTS))
    else:
        target = parent[key] if isinstance(parent[key], dict) else parent
        if isinstance(target, dict):
            target[draw(st.sampled_from(["x_y", "extra", "traceparent", "Upper", "n0"]))] = draw(
                st.sampled_from(["v", 7, True, None, {"a": 1}, 2**40])
            )
    return document


_SETTINGS = settings(max_examples=10, deadline=None, derandomize=True,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                            HealthCheck.data_too_large])


@pytest.mark.parametrize("type_name", sorted(SCHEMAS))
def test_documents_generated_from_a_schema_pass_the_validator_too(type_name: str) -> None:
    @_SETTINGS
    @given(documents(type_name))
    def check(document: Any) -> None:
        assert_same_verdict(type_name, document)

    check()


@pytest.mark.parametrize("type_name", sorted(SCHEMAS))
def test_mutated_documents_get_the_same_verdict_from_schema_and_validator(type_name: str) -> None:
    @_SETTINGS
    @given(mutated(type_name))
    def check(document: Any) -> None:
        assert_same_verdict(type_name, document)

    check()


def _every_mutation(document: dict[str, Any]) -> Any:
    for path in _paths(document):
        if not path:
            continue
        changes: list[Any] = [_DROP, *REPLACEMENTS]
        for change in changes:
            mutant = copy.deepcopy(document)
            parent, key = _parent_and_key(mutant, path)
            if change is _DROP:
                del parent[key]
            else:
                parent[key] = change
            yield mutant
        value = _parent_and_key(document, path)
        target = value[0][value[1]]
        if isinstance(target, dict):
            for name, extra in (("x_y", 1), ("extra", "v"), ("n0", 2**40), ("upper", None), ("Upper", "v")):
                yield _with_path(document, path, {**target, name: extra})


def _with_path(document: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    mutant = copy.deepcopy(document)
    parent, key = _parent_and_key(mutant, path)
    parent[key] = value
    return mutant


@pytest.mark.parametrize("type_name", sorted(SCHEMAS))
def test_every_single_mutation_of_the_example_gets_the_same_verdict(type_name: str) -> None:
    # Exhaustive where the random tests sample: every field of the example, dropped or replaced
    # by every value of REPLACEMENTS, and every object given an unknown field.
    example = _EXAMPLE[type_name]
    assert project_verdict(example) is None and schema_verdict(type_name, example) is None
    for mutant in _every_mutation({**example, "data": {**example["data"]}}):
        assert_same_verdict(type_name, mutant)


# --- the disagreements once found, kept as plain cases --------------------------------------



def _with(type_name: str, *changes: tuple[tuple[Any, ...], Any]) -> dict[str, Any]:
    document = copy.deepcopy(_EXAMPLE[type_name])
    for path, value in changes:
        parent, key = _parent_and_key(document, path)
        if value is _DROP:
            del parent[key]
        else:
            parent[key] = value
    return document


_REQ = "hotupdate.update.requested.v2"
_SERVERS = ("data", "update_server_list")


@pytest.mark.parametrize(
    "type_name,document",
    [
        (_REQ, _with(_REQ, (_SERVERS, _DROP))),  # hot_server without servers
        (_REQ, _with(_REQ, (_SERVERS, {"game": {}}))),  # … or with a group of no IP
        (_REQ, _with(_REQ, (("data", "rollout", "batch_percent"), 50))),  # both batch settings
        (_REQ, _with(_REQ, (("data", "erlang_cmd_list"), ["  "]))),  # a blank Erlang command
        (_REQ, _with(_REQ, (("data", "parent_id"), "350cf0ef"))),  # a parent without its relation
        (_REQ, _with(_REQ, (("sequence",), "1"))),
        (_REQ, _with(_REQ, (("sequence",), True))),
        (_REQ, _with(_REQ, (("sequence",), 2**63))),
        (_REQ, _with(_REQ, (("time",), 1764223500))),
        (_REQ, _with(_REQ, (("id",), _DROP))),
        (_REQ, _with(_REQ, (("specversion",), _DROP))),
        (_REQ, _with(_REQ, (("data", "update_file_list", 0, "size"), "18432"))),
        ("hotupdate.update.completed.v2", _with("hotupdate.update.completed.v2", (("data", "outcome"), "succeeded"),
                                                (("data", "final_result"), False))),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_documents_both_refuse(type_name: str, document: dict[str, Any]) -> None:
    assert schema_verdict(type_name, document) is not None
    assert project_verdict(document) is not None


def test_an_unknown_cloudevents_extension_is_accepted_by_both() -> None:
    document = {**_EXAMPLE[_REQ], "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                "tracestate": "congo=t61rcWkgMzE", "priority": 3, "replayable": True}
    assert schema_verdict(_REQ, document) is None
    assert project_verdict(document) is None


def test_an_integral_number_is_an_integer_for_both() -> None:
    document = _with(_REQ, (("sequence",), 1.0), (("data", "update_file_list", 0, "size"), 18432.0))
    assert schema_verdict(_REQ, document) is None
    assert project_verdict(document) is None
