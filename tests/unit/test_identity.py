"""The identity table and the broker permissions derived from one configuration, without a broker."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bus.contract.envelope import Envelope, EnvelopeError
from bus.contract.events import CATALOGUE, TEAM_PRODUCER
from bus.contract.examples import EXAMPLES
from bus.contract.registry import make_envelope
from bus.identity import identity_from_config
from bus.permissions import provision_grants, routing_keys_pattern
from bus.publisher import broker_login
from cli.bus_commands import vhost_of
from domain.config import HotupdateConfig, parse_config
from tests.identity_support import rig_config


def _config(tmp_path: Path, **broker: object) -> HotupdateConfig:
    raw = rig_config(tmp_path, "amqp://guest:guest@127.0.0.1:5672/", "release", pairs=2)
    raw["broker"] = {**raw["broker"], **broker}
    return parse_config(raw, tmp_path / "config.yaml")


def _envelope(name: str, project: str = "ssss") -> Envelope:
    event = next(e for e in EXAMPLES if e.event_name == name)
    return make_envelope(event, source="anything/at/all", updateid="u-1", project=project, area="cn")


def test_each_event_may_come_only_from_the_instances_of_its_producer_serving_the_project(tmp_path):
    identity = identity_from_config(_config(tmp_path))
    assert identity.allowed[("pull.requested", "ssss")] == {"hotupdate.cmdb", "team.release"}
    assert identity.allowed[("pull.requested", "snqxz")] == {"hotupdate.cmdb"}
    assert identity.allowed[("files.pulled", "ssss")] == {"hotupdate.file_pull.recv1"}
    assert identity.allowed[("files.pulled", "snqxz")] == {"hotupdate.file_pull.recv2"}
    assert identity.allowed[("files.pushed", "snqxz")] == {"hotupdate.file_push.recv2"}
    assert identity.allowed[("ip.finished", "ssss")] == {"hotupdate.ops_executor.ops1"}
    assert identity.allowed[("update.completed", "snqxz")] == {"hotupdate.ops_executor.ops2"}
    assert identity.allowed[("update.stalled", "snqxz")] == {"hotupdate.cmdb"}
    # every component's event is in the table; a team tool's event only where a team is granted it
    names = {model.event_name for model in CATALOGUE if model.producer != TEAM_PRODUCER}
    assert {name for name, _ in identity.allowed} == names
    # projection and notifier publish nothing
    assert identity.grants_of("hotupdate.projection") == {} and identity.grants_of("hotupdate.notifier") == {}
    assert identity.grants_of("team.release") == {"pull.requested": {"ssss"}}
    assert identity.grants_of("hotupdate.ops_executor.ops2")["ip.finished"] == {"snqxz"}


def test_the_reason_names_the_verified_publisher_and_who_may_publish_whatever_the_source_claims(tmp_path):
    identity = identity_from_config(_config(tmp_path))
    forged = _envelope("ip.finished")
    assert identity.problem(forged, "hotupdate.ops_executor.ops1") is None
    assert identity.problem(forged, "hotupdate.ops_executor.ops2") == (
        "identity: broker user 'hotupdate.ops_executor.ops2' may not publish hotupdate.ip.finished.v1 for project "
        "'ssss' (allowed: hotupdate.ops_executor.ops1)")
    assert identity.problem(forged, "team.release") is not None
    assert "carries no verified publisher" in (identity.problem(forged, "") or "")
    assert identity.problem(_envelope("pull.requested"), "team.release") is None
    assert identity.problem(_envelope("pull.requested", "snqxz"), "team.release") is not None


def test_a_shared_development_user_may_publish_anything_and_nobody_else_may(tmp_path):
    identity = identity_from_config(_config(tmp_path, shared_user="guest"))
    assert identity.problem(_envelope("ip.finished"), "guest") is None
    assert identity.problem(_envelope("ip.finished"), "mallory") is not None


def test_provisioned_topic_permissions_match_exactly_the_routing_keys_the_table_allows(tmp_path):
    config = _config(tmp_path)
    identity = identity_from_config(config)
    grants = {g.user: g for g in provision_grants(config, vhost="/", identity=identity)}
    assert set(grants) == {
        "hotupdate.cmdb", "hotupdate.projection", "hotupdate.notifier", "hotupdate.file_pull.recv1",
        "hotupdate.file_pull.recv2", "hotupdate.file_push.recv1", "hotupdate.file_push.recv2",
        "hotupdate.ops_executor.ops1", "hotupdate.ops_executor.ops2", "team.release"}
    for user, grant in grants.items():
        for (name, project), users in identity.allowed.items():
            for version in (1, 2):
                key = f"{project}.cn.{name}.v{version}"
                assert bool(re.search(grant.topic_write, key)) == (user in users), (user, key)
    ops1 = grants["hotupdate.ops_executor.ops1"].topic_write
    for sneaky in ("ssss.cn.ip.finished.v1.x", "ssss.cn.ipXfinished.v1", "ssss.a.b.ip.finished.v1",
                   "ssssx.cn.ip.finished.v1"):
        assert not re.search(ops1, sneaky)
    assert grants["hotupdate.projection"].topic_write == "^$"
    assert grants["team.release"].configure == "^$" and grants["team.release"].read == "^$"


def test_a_component_may_configure_only_its_own_queues(tmp_path):
    grants = {g.user: g for g in provision_grants(_config(tmp_path), vhost="/")}
    pull1 = grants["hotupdate.file_pull.recv1"]
    for own in ("hotupdate.file_pull.recv1", "hotupdate.file_pull.recv1.parked",
                "hotupdate.file_pull.recv1.retry.1000ms"):
        assert re.search(pull1.configure, own) and re.search(pull1.read, own) and re.search(pull1.write, own)
    for other in ("hotupdate.file_pull.recv2", "hotupdate.file_pull.recv1x", "hotupdate.cmdb",
                  "hotupdate.events", "hotupdate.file_pull.recv1.retry.x", "hotupdate.history"):
        assert not re.search(pull1.configure, other), other
    assert re.search(pull1.write, "hotupdate.events") and re.search(pull1.write, "amq.default")
    assert re.search(grants["hotupdate.projection"].configure, "hotupdate.history")


def test_routing_keys_pattern_of_nothing_matches_nothing():
    assert routing_keys_pattern({}) == "^$"
    assert not re.search(routing_keys_pattern({}), "ssss.cn.ip.finished.v1")


def test_broker_login_is_the_url_user_or_guest():
    assert broker_login("amqp://hotupdate.cmdb:pw@mq:5672/") == "hotupdate.cmdb"
    assert broker_login("amqp://team.a%2Fb:pw@mq/") == "team.a/b"
    assert broker_login("amqp://mq:5672/") == "guest"


def test_vhost_of_a_broker_url():
    assert vhost_of("amqp://u:p@h:5672/") == "/"
    assert vhost_of("amqp://u:p@h:5672") == "/"
    assert vhost_of("amqp://u:p@h:5672/%2F") == "/"
    assert vhost_of("amqp://u:p@h/test-1") == "test-1"


@pytest.mark.parametrize("body", [
    b'{"data":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    b"[" * 100_000 + b"]" * 100_000,
    b'{"id":"x","data":' + b'{"a":' * 5_000 + b"1" + b"}" * 5_000 + b"}",
], ids=["in-data", "top-level", "objects"])
def test_deeply_nested_json_is_an_envelope_error_not_a_recursion_error(body):
    with pytest.raises(EnvelopeError, match="nesting too deep"):
        Envelope.from_bytes(body)


def test_a_team_tools_event_may_come_only_from_the_teams_granted_it(tmp_path):
    nobody = identity_from_config(_config(tmp_path))
    release = _envelope("release.announced")
    assert nobody.problem(release, "hotupdate.cmdb") == (
        "identity: broker user 'hotupdate.cmdb' may not publish hotupdate.release.announced.v1 for project "
        "'ssss' (allowed: nobody)")
    granted = identity_from_config(_config(tmp_path, teams={
        "ci": {"projects": ["ssss"], "events": ["release.announced"]}}))
    assert granted.problem(release, "team.ci") is None
    assert granted.problem(_envelope("release.announced", "snqxz"), "team.ci") is not None
    assert granted.grants_of("team.ci") == {"release.announced": {"ssss"}}
