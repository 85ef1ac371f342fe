"""Pure checks of the envelope, the catalogue's validation rules and upcasting."""

from __future__ import annotations

import json
from typing import Any, ClassVar

import pytest
from pydantic import ValidationError

from bus.contract.envelope import Envelope, EnvelopeError, derived_event_id, split_type
from bus.contract.events import (
    CATALOGUE,
    BatchFinished,
    Event,
    FileEntry,
    IpFinished,
    PullRequested,
    RolloutPlan,
    UpdateCompleted,
    UpdateCompletedV1,
    UpdateRequested,
    UpdateRequestedV1,
)
from bus.contract.examples import EXAMPLES, HOT_CLIENT_REQUEST
from bus.contract.registry import DEFAULT_REGISTRY, InvalidEventData, Registry, UnknownEventType, make_envelope
from bus.handling import child_envelope


def _env(event: Event = EXAMPLES[0], **kw: Any) -> Envelope:
    return make_envelope(event, source="tests", updateid="u-1", project="ssss", area="cn", **kw)


def test_routing_key_is_project_area_event_version():
    assert _env().routing_key == "ssss.cn.pull.requested.v1"


def test_type_must_carry_a_version():
    assert split_type("hotupdate.ip.finished.v12") == ("ip.finished", 12)
    for bad in ("hotupdate.ip.finished", "ip.finished.v1", "hotupdate.ip.finished.v0", "hotupdate..v1"):
        with pytest.raises(EnvelopeError):
            split_type(bad)


def test_envelope_round_trips_through_bytes_unchanged():
    env = _env()
    assert Envelope.from_bytes(env.to_bytes()) == env
    assert json.loads(env.to_bytes())["specversion"] == "1.0"


@pytest.mark.parametrize("field,value", [("project", "SSSS"), ("area", "c n"), ("project", "a.b"), ("sequence", -1)])
def test_envelope_refuses_bad_routing_words(field, value):
    raw = _env().model_dump(mode="json")
    raw[field] = value
    with pytest.raises(EnvelopeError, match=field):
        Envelope.from_bytes(json.dumps(raw).encode())


def test_envelope_refuses_naive_time_and_attribute_names_cloudevents_forbids():
    raw = _env().model_dump(mode="json")
    with pytest.raises(EnvelopeError, match="timezone"):
        Envelope.from_bytes(json.dumps({**raw, "time": "2026-11-24T10:00:00"}).encode())
    for name in ("Sneaky", "x_y", "data_base64", "trace-parent"):  # CloudEvents: lowercase a-z and 0-9 only
        with pytest.raises(EnvelopeError, match="not a CloudEvents attribute name"):
            Envelope.from_bytes(json.dumps({**raw, name: 1}).encode())
    with pytest.raises(EnvelopeError, match="string, boolean or integer"):
        Envelope.from_bytes(json.dumps({**raw, "sneaky": {"nested": 1}}).encode())


@pytest.mark.parametrize("event", [*EXAMPLES, HOT_CLIENT_REQUEST], ids=lambda e: e.type_name())
def test_every_example_decodes_to_itself_or_its_newest_version(event):
    decoded = DEFAULT_REGISTRY.decode(_env(event))
    if DEFAULT_REGISTRY.latest(event.event_name) is type(event):
        assert decoded == event
    else:  # an older version arrives upcast, with every field it had (a newer nested field comes as null)
        assert type(decoded) is DEFAULT_REGISTRY.latest(event.event_name)
        assert decoded.model_dump(include=set(type(event).model_fields), exclude_none=True) == event.model_dump(
            exclude_none=True)


def test_every_catalogue_entry_has_one_example():
    assert sorted(e.type_name() for e in EXAMPLES) == sorted(m.type_name() for m in CATALOGUE)


def test_v1_update_requested_decodes_as_the_newest_with_one_batch_and_no_parent():
    v1 = UpdateRequestedV1.model_validate(HOT_CLIENT_REQUEST.model_dump(exclude={"rollout", "parent_id", "relation"}))
    env = _env(v1)
    assert env.type == "hotupdate.update.requested.v1" and env.routing_key == "ssss.cn.update.requested.v1"

    decoded = DEFAULT_REGISTRY.decode(Envelope.from_bytes(env.to_bytes()))

    assert type(decoded) is UpdateRequested
    assert (decoded.rollout, decoded.parent_id, decoded.relation) == (None, None, None)
    assert decoded == HOT_CLIENT_REQUEST


@pytest.mark.parametrize("final_result,outcome", [(True, "succeeded"), (False, "failed")])
def test_v1_update_completed_decodes_as_v2_with_outcome_from_final_result(final_result, outcome):
    v1 = UpdateCompletedV1(update_type="hot_server", version="1", final_result=final_result, final_data="x",
                           ok_count=3, failed_count=0 if final_result else 1)

    decoded = DEFAULT_REGISTRY.decode(Envelope.from_bytes(_env(v1).to_bytes()))

    assert type(decoded) is UpdateCompleted
    assert (decoded.outcome, decoded.not_run, decoded.ok_count) == (outcome, [], 3)


def test_update_completed_built_without_outcome_derives_it_and_refuses_a_contradiction():
    base = {"update_type": "hot_server", "version": "1", "final_data": "x"}
    assert UpdateCompleted(**base, final_result=True).outcome == "succeeded"
    assert UpdateCompleted(**base, final_result=False).outcome == "failed"
    with pytest.raises(ValidationError, match="exactly when outcome is 'succeeded'"):
        UpdateCompleted(**base, final_result=True, outcome="aborted")
    with pytest.raises(ValidationError, match="exactly when outcome is 'succeeded'"):
        UpdateCompleted(**base, final_result=False, outcome="succeeded")


def test_rollout_plan_takes_a_count_or_a_percentage_not_both():
    assert RolloutPlan().on_failure == "stop"
    assert RolloutPlan(batch_percent=30, on_failure="confirm").batch_percent == 30
    with pytest.raises(ValidationError, match="not both"):
        RolloutPlan(batch_size=3, batch_percent=30)
    for bad in ({"batch_size": 0}, {"batch_percent": 0}, {"batch_percent": 101}, {"pause_seconds": -1},
                {"on_failure": "retry"}):
        with pytest.raises(ValidationError):
            RolloutPlan.model_validate(bad)


def test_a_linked_update_names_both_its_parent_and_how_it_relates():
    base = HOT_CLIENT_REQUEST.model_dump()
    linked = UpdateRequested.model_validate({**base, "parent_id": "350cf0ef-c12e", "relation": "retry_failed"})
    assert linked.relation == "retry_failed"
    with pytest.raises(ValidationError, match="go together"):
        UpdateRequested.model_validate({**base, "parent_id": "350cf0ef-c12e"})
    with pytest.raises(ValidationError, match="go together"):
        UpdateRequested.model_validate({**base, "relation": "rollback"})


def test_batch_finished_is_done_exactly_on_the_last_batch():
    BatchFinished(batch=2, batches=2, ok_count=1, failed_count=0, next="done")
    with pytest.raises(ValidationError, match="last batch"):
        BatchFinished(batch=1, batches=2, ok_count=1, failed_count=0, next="done")
    with pytest.raises(ValidationError, match="last batch"):
        BatchFinished(batch=2, batches=2, ok_count=1, failed_count=0, next="continue")
    with pytest.raises(ValidationError, match="beyond"):
        BatchFinished(batch=3, batches=2, ok_count=1, failed_count=0, next="done")


@pytest.mark.parametrize("name", ["../etc/passwd", "/etc/passwd", "a/../../b", "a//b", "", "a\\b", "a\x00b", "./a"])
def test_file_names_must_stay_relative(name):
    with pytest.raises(ValidationError):
        FileEntry(file_name=name, file_md5="0" * 32, size=1)


@pytest.mark.parametrize("server", ["qq_1;rm -rf /", "$(reboot)", "a b", "../x", "-e", "x`id`"])
def test_server_names_with_shell_metacharacters_are_refused(server):
    with pytest.raises(ValidationError):
        IpFinished(version="1", ip="127.0.0.1", group="game", update_data={server: {"data": "", "status": True}},
                   erl_data={})


def test_ips_must_be_ip_addresses_and_are_normalised():
    ok = IpFinished(version="1", ip="::0001", group="game", update_data={}, erl_data={})
    assert ok.ip == "::1"
    with pytest.raises(ValidationError, match="IP address"):
        IpFinished(version="1", ip="10.1.1.300", group="game", update_data={}, erl_data={})


def test_versions_are_digits_only():
    with pytest.raises(ValidationError):
        PullRequested(update_type="hot_server", version="0042x", area_name="大陆", requested_by="a")


def test_update_requested_must_fit_its_update_type():
    base = HOT_CLIENT_REQUEST.model_dump()
    with pytest.raises(ValidationError, match="hot_client needs 'data'"):
        UpdateRequested.model_validate({**base, "data": []})
    with pytest.raises(ValidationError, match="hot_server needs 'update_server_list'"):
        UpdateRequested.model_validate({**base, "update_type": "hot_server", "data": None})


def test_unknown_type_and_unknown_version_are_clear_errors():
    raw = _env().model_dump(mode="json")
    with pytest.raises(UnknownEventType, match="unknown event type"):
        DEFAULT_REGISTRY.decode(Envelope.model_validate({**raw, "type": "hotupdate.nope.v1"}))
    with pytest.raises(UnknownEventType, match=r"unknown version \(known: v1\)"):
        DEFAULT_REGISTRY.decode(Envelope.model_validate({**raw, "type": "hotupdate.pull.requested.v7"}))


def test_invalid_data_error_names_the_field():
    raw = _env().model_dump(mode="json")
    raw["data"]["version"] = "abc"
    with pytest.raises(InvalidEventData, match=r"version: String should match"):
        DEFAULT_REGISTRY.decode(Envelope.model_validate(raw))


class _GreetedV1(Event):
    event_name: ClassVar[str] = "greeted"
    event_version: ClassVar[int] = 1
    producer: ClassVar[str] = "tests"
    consumers: ClassVar[tuple[str, ...]] = ()
    who: str


class _GreetedV2(Event):
    """v2 splits the name and adds a language, defaulting old events to Chinese."""

    event_name: ClassVar[str] = "greeted"
    event_version: ClassVar[int] = 2
    producer: ClassVar[str] = "tests"
    consumers: ClassVar[tuple[str, ...]] = ()
    who: str
    language: str

    @classmethod
    def upcast(cls, data: dict[str, Any]) -> dict[str, Any]:
        return {**data, "language": "zh"}


def test_older_versions_are_upcast_to_the_newest_in_one_place():
    registry = Registry.of([_GreetedV1, _GreetedV2])
    decoded = registry.decode(_env(_GreetedV1(who="alice")))
    assert decoded == _GreetedV2(who="alice", language="zh")
    assert registry.decode(_env(_GreetedV2(who="bob", language="en"))) == _GreetedV2(who="bob", language="en")


def test_a_version_gap_in_the_registry_is_refused():
    with pytest.raises(ValueError, match="no v1"):
        Registry.of([_GreetedV2])


def test_child_events_get_stable_ids_and_continue_the_sequence():
    parent = _env(sequence=5)
    a = child_envelope(parent, EXAMPLES[1], source="s", offset=1)
    b = child_envelope(parent, EXAMPLES[1], source="s", offset=1)
    other_key = child_envelope(parent, EXAMPLES[1], source="s", offset=2, key="127.0.0.1")
    assert a.id == b.id == derived_event_id(parent.id, a.type)
    assert other_key.id != a.id
    assert (a.sequence, other_key.sequence) == (6, 7)
    assert a.causationid == parent.id and a.correlationid == parent.correlationid
