"""Quorum settings for a cluster: from the configuration into every quorum queue's arguments."""

from __future__ import annotations

import pytest

from bus.topology import SINGLE_ACTIVE_CONSUMER, Topology, topology_for
from domain.config import ConfigError, parse_config
from tests.cmdb_support import config_dict


def test_unset_settings_leave_the_broker_defaults_so_existing_queues_still_declare():
    assert Topology().quorum_arguments() == {"x-queue-type": "quorum"}
    assert Topology().delivery_limit is None


def test_the_configured_replication_factor_and_delivery_limit_reach_the_topology(tmp_path):
    raw = config_dict()
    raw["broker"] = {"quorum_group_size": 3, "delivery_limit": 7}
    topology = topology_for(parse_config(raw, tmp_path / "config.yaml"), "ns")
    assert topology == Topology("ns", quorum_group_size=3, delivery_limit=7)
    assert topology.quorum_arguments() == {"x-queue-type": "quorum", "x-quorum-initial-group-size": 3}


def test_a_replication_factor_of_zero_is_refused(tmp_path):
    raw = config_dict()
    raw["broker"] = {"quorum_group_size": 0}
    with pytest.raises(ConfigError, match="quorum_group_size"):
        parse_config(raw, tmp_path / "config.yaml")


def test_single_active_consumer_is_the_boolean_the_broker_expects():
    assert SINGLE_ACTIVE_CONSUMER == {"x-single-active-consumer": True}
    assert SINGLE_ACTIVE_CONSUMER["x-single-active-consumer"] is True
