"""The CMDB's pure rules: area names and codes, rsync and update targets, tokens, state checks."""

from __future__ import annotations

import pytest

from domain.config import Operator
from producers.cmdb.areas import resolve_area
from producers.cmdb.auth import hash_token, operator_for
from producers.cmdb.errors import AmbiguousArea, BadState, InvalidChoice, NotConfigured, UnknownArea, UnknownProject
from producers.cmdb.states import CAN_PUSH, State, require
from producers.cmdb.targets import rsync_targets, update_targets
from tests.cmdb_support import make_config


@pytest.fixture
def config(tmp_path):
    return make_config(tmp_path)


def test_area_display_name_resolves_to_its_only_code(config):
    area = resolve_area(config, "ssss", "hot_server", "大陆")
    assert (area.name, area.code) == ("大陆", "cn")


def test_area_code_resolves_to_its_display_name(config):
    area = resolve_area(config, "snqxz", "hot_server", "tw")
    assert (area.name, area.code) == ("台湾", "tw")


def test_display_name_with_several_codes_needs_the_code_chosen(config):
    with pytest.raises(AmbiguousArea, match=r"several codes \(cn, cn_new\).*area_code"):
        resolve_area(config, "snqxz", "hot_server", "大陆")
    area = resolve_area(config, "snqxz", "hot_server", "大陆", area_code="cn_new")
    assert (area.name, area.code) == ("大陆", "cn_new")


def test_area_code_that_is_not_one_of_the_names_codes_is_refused(config):
    with pytest.raises(UnknownArea, match="no code 'vn'"):
        resolve_area(config, "snqxz", "hot_server", "大陆", area_code="vn")


def test_unknown_area_lists_the_known_ones(config):
    with pytest.raises(UnknownArea, match=r"unknown area '日本'.*大陆 \(cn\)"):
        resolve_area(config, "ssss", "hot_server", "日本")


def test_unknown_project_lists_the_known_ones(config):
    with pytest.raises(UnknownProject, match=r"unknown project 'nope' \(known: snqxz, ssss\)"):
        resolve_area(config, "nope", "hot_server", "大陆")


def test_rsync_targets_of_an_area_carry_no_password_file(config):
    refs, ops_manager = rsync_targets("ssss", config.projects["ssss"], "大陆")
    assert ops_manager == "ops1"
    assert [r.model_dump() for r in refs] == [
        {"name": "ssss_cn", "ip": "127.0.0.1", "port": 10873, "module": "cmdb_hot_server", "user": "cmdb_user"}
    ]


def test_area_without_rsync_target_is_not_configured(config):
    with pytest.raises(NotConfigured, match=r"no rsync target.*'snqxz', area '大陆'"):
        rsync_targets("snqxz", config.projects["snqxz"], "大陆")


def test_hot_server_targets_default_to_the_whole_inventory(config):
    targets = update_targets("ssss", config.projects["ssss"], "cn", "hot_server")
    assert targets == {
        "update_server_list": {
            "game": {"127.0.0.11": ["qq_1", "qq_2"], "127.0.0.12": ["qq_3", "qq_4"]},
            "cross": {"127.0.0.21": ["cross_1"]},
            "cross_center": {"127.0.0.31": ["center_1"]},
        }
    }


def test_narrowed_servers_keep_their_group_and_ip(config):
    targets = update_targets("ssss", config.projects["ssss"], "cn", "hot_server", servers=["qq_2", "cross_1"])
    assert targets == {"update_server_list": {"game": {"127.0.0.11": ["qq_2"]}, "cross": {"127.0.0.21": ["cross_1"]}}}


def test_narrowing_to_a_server_outside_the_inventory_is_refused(config):
    with pytest.raises(InvalidChoice, match=r"servers\[1\]: 'qq_99' is not in the inventory"):
        update_targets("ssss", config.projects["ssss"], "cn", "hot_server", servers=["qq_1", "qq_99"])


def test_hot_client_targets_are_the_cdn_dirs_and_can_be_narrowed(config):
    proj = config.projects["ssss"]
    assert len(update_targets("ssss", proj, "cn", "hot_client")["data"]) == 2
    assert update_targets("ssss", proj, "cn", "hot_client", cdn_dirs=["res.ssss.chuangyunet.com/s1"]) == {
        "data": [{"cdn_root_url": "res.ssss.chuangyunet.com", "cdn_dir": "s1"}]
    }
    with pytest.raises(InvalidChoice, match="x9"):
        update_targets("ssss", proj, "cn", "hot_client", cdn_dirs=["x9"])
    with pytest.raises(InvalidChoice, match="choose cdn_dirs, not servers"):
        update_targets("ssss", proj, "cn", "hot_client", servers=["qq_1"])


def test_area_without_inventory_has_nothing_to_update(config):
    # The configuration refuses to load such an area; the CMDB still checks (model_copy does not validate).
    snqxz = config.projects["snqxz"].model_copy(update={"inventory": {}})
    with pytest.raises(NotConfigured, match="no game server in the inventory of project 'snqxz', area code 'vn'"):
        update_targets("snqxz", snqxz, "vn", "hot_server")


def test_token_names_its_operator_and_nothing_else_does():
    operators = [Operator(name="alice", token_sha256=hash_token("a-token")),
                 Operator(name="bob", token_sha256=hash_token("b-token"))]
    assert operator_for("b-token", operators) == "bob"
    assert operator_for("c-token", operators) is None
    assert operator_for("", operators) is None
    assert operator_for(hash_token("a-token"), operators) is None  # the stored hash is not a token


def test_push_before_the_pull_finished_says_so():
    require("u1", State.PULLED, CAN_PUSH, "push")
    with pytest.raises(BadState, match="it is pull_requested \\(the pull has not finished yet\\)"):
        require("u1", State.PULL_REQUESTED, CAN_PUSH, "push")
