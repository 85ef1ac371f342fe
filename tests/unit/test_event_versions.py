"""A published event version never changes: a new field or value is a new version, and the old one is upcast.

Other teams' consumers validate strictly (no unknown fields, closed enums) against the schema of
the version they were built for, so changing a published version in place breaks them.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from bus.contract.envelope import Envelope
from bus.contract.events import (
    CATALOGUE,
    BatchFinished,
    BatchFinishedV1,
    RolloutPlan,
    RolloutPlanV2,
    UpdateRequested,
    UpdateRequestedV2,
)
from bus.contract.examples import EXAMPLES
from bus.contract.registry import DEFAULT_REGISTRY, InvalidEventData, make_envelope
from bus.docs import render_schemas

# sha256 of each superseded version's schema as it was published (update.requested v2 and
# batch.finished v1: as at a554fbc, before issue 17 changed them in place).
PUBLISHED = {
    "hotupdate.update.requested.v1.json": "403f5b0522594af937d15b239e63acd53c9d4c0501ace3fae5453895184c83b9",
    "hotupdate.update.requested.v2.json": "84553113a6e58077600124521acbddac241ac246b11e15076e860aebff7b4a1e",
    "hotupdate.batch.finished.v1.json": "9d4e1d91f8b532179b96587e3e0aafdc5bb846810a9f4b130282288d8e6715c5",
    "hotupdate.update.completed.v1.json": "dd333505b61421dfe4fcff000e1e35fb47049182a7aa2b39c23e4e7125951398",
}


def _example(model: type[Any]) -> Any:
    return next(e for e in EXAMPLES if type(e) is model)


def _decode(event: Any, data: dict[str, Any] | None = None) -> Any:
    env = make_envelope(event, source="tests", updateid="u-1", project="ssss", area="cn")
    if data is not None:
        env = env.model_copy(update={"data": data})
    return DEFAULT_REGISTRY.decode(Envelope.from_bytes(env.to_bytes()))


def test_superseded_versions_keep_the_schema_they_were_published_with():
    superseded = {f"{m.type_name()}.json" for m in CATALOGUE if DEFAULT_REGISTRY.latest(m.event_name) is not m}
    assert superseded == set(PUBLISHED), "a version was superseded: pin its published schema here"
    schemas = render_schemas()
    changed = [name for name, digest in PUBLISHED.items()
               if hashlib.sha256(schemas[name].encode("utf-8")).hexdigest() != digest]
    assert changed == [], f"published schemas changed in place: {changed} (make a new version instead)"


def test_v2_update_requested_decodes_as_v3_with_the_same_plan_and_no_analysis_step():
    v2 = _example(UpdateRequestedV2)
    assert isinstance(v2.rollout, RolloutPlan)

    decoded = _decode(v2)

    assert type(decoded) is UpdateRequested and isinstance(decoded.rollout, RolloutPlanV2)
    assert decoded.rollout.analysis_timeout_seconds is None
    assert decoded.rollout.model_dump(exclude={"analysis_timeout_seconds"}) == v2.rollout.model_dump()
    assert decoded.model_dump(exclude={"rollout"}) == v2.model_dump(exclude={"rollout"})


def test_v2_update_requested_refuses_the_analysis_step_v3_added():
    v2 = _example(UpdateRequestedV2)
    data = v2.model_dump(mode="json")
    data["rollout"]["analysis_timeout_seconds"] = 60
    with pytest.raises(InvalidEventData, match="analysis_timeout_seconds"):
        _decode(v2, data)
    assert "analysis_timeout_seconds" not in RolloutPlan.model_json_schema()["properties"]


def test_v1_batch_finished_decodes_as_v2_unchanged():
    v1 = _example(BatchFinishedV1)

    decoded = _decode(v1)

    assert type(decoded) is BatchFinished
    assert decoded.model_dump() == v1.model_dump()


def test_v1_batch_finished_refuses_await_analysis_which_v2_added():
    v1 = _example(BatchFinishedV1)
    with pytest.raises(InvalidEventData, match="next"):
        _decode(v1, {**v1.model_dump(mode="json"), "next": "await_analysis"})
    assert _decode(_example(BatchFinished)).next == "await_analysis"
