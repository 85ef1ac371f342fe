"""A configuration whose parts contradict each other does not load; each contradiction is named.

Every message names the file, the dotted key, the value and why it cannot work; `hotupdate
config check` prints the same lines on any machine.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from cli.config_cmd import register
from domain.config import ConfigError, parse_config
from domain.config_check import check_config

FILE = Path("/etc/hotupdate/hotupdate.yaml")
CDN = [{"cdn_root_url": "res.ssss.chuangyunet.com", "cdn_dir": "t1"}]


def _base() -> dict[str, Any]:
    """Two projects, two receivers, a local ops manager on loopback and an ssh one on real addresses."""
    return {
        "projects": {
            "ssss": {
                "areas": {"hot_server": {"大陆": ["cn"]}, "hot_client": {"大陆": ["cn"]}},
                "rsync_targets": [{"name": "ssss_cn", "area": "大陆", "ip": "127.0.0.1", "module": "m",
                                   "user": "u", "pass_file": "/etc/ssss.password", "ops_manager": "ops1"}],
                "inventory": {"cn": {"servers": {"game": {"127.0.0.11": ["qq_1"]}}, "cdn": CDN}},
            },
            "snqxz": {
                "areas": {"hot_server": {"台湾": ["tw"]}},
                "rsync_targets": [{"name": "snqxz_tw", "area": "台湾", "ip": "203.66.5.37", "module": "m",
                                   "user": "u", "pass_file": "/etc/snqxz.password", "ops_manager": "ops2"}],
                "inventory": {"tw": {"servers": {"game": {"10.1.1.1": ["tw_1"]}}}},
            },
        },
        "receivers": {
            "file_push8": {"projects": ["ssss"], "version_root": "/v", "backup_root": "/b"},
            "file_push9": {"projects": ["snqxz"], "version_root": "/v", "backup_root": "/b"},
        },
        "ops_managers": {
            "ops1": {"projects": ["ssss"], "incoming_root": "/in", "cdn_origin_root": "/cdn"},
            "ops2": {"projects": ["snqxz"], "incoming_root": "/in", "cdn_origin_root": "/cdn",
                     "runner": {"kind": "ssh"}},
        },
    }


def _refused(mutate: Any) -> list[str]:
    raw = _base()
    mutate(raw)
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, FILE)
    return str(caught.value).splitlines()


def test_the_base_configuration_is_consistent():
    assert parse_config(_base(), FILE).receiver_for("snqxz") == "file_push9"


def test_two_receivers_claiming_one_project_are_named():
    lines = _refused(lambda raw: raw["receivers"]["file_push9"]["projects"].append("ssss"))
    assert lines == [f"{FILE}: receivers.file_push9.projects: project 'ssss' is also served by receiver "
                     "'file_push8': both would pull and push every update of it; a project has one version receiver"]


def test_rsync_target_naming_an_unknown_ops_manager_is_named():
    lines = _refused(lambda raw: raw["projects"]["ssss"]["rsync_targets"][0].update(ops_manager="ops9"))
    assert lines == [f"{FILE}: projects.ssss.rsync_targets.ssss_cn.ops_manager: unknown ops manager 'ops9'"]


def test_rsync_target_naming_an_ops_manager_that_does_not_serve_the_project_is_named():
    lines = _refused(lambda raw: raw["projects"]["ssss"]["rsync_targets"][0].update(ops_manager="ops2"))
    assert lines == [f"{FILE}: projects.ssss.rsync_targets.ssss_cn.ops_manager: ops manager 'ops2' does not list "
                     "project 'ssss' in ops_managers.ops2.projects: it would receive the files but never the "
                     "update request"]


def test_targets_of_one_area_behind_two_ops_managers_are_named():
    def two_managers(raw: dict[str, Any]) -> None:
        other = {**raw["projects"]["ssss"]["rsync_targets"][0], "name": "ssss_cn2", "ops_manager": "ops2"}
        raw["projects"]["ssss"]["rsync_targets"].append(other)
        raw["ops_managers"]["ops2"]["projects"].append("ssss")

    assert _refused(two_managers) == [
        f"{FILE}: projects.ssss.rsync_targets: the targets of area '大陆' name several ops managers (ops1, ops2): "
        "one update request goes to one ops manager, so the CMDB refuses every update of this area"]


def test_hot_server_area_code_without_game_servers_is_named():
    lines = _refused(lambda raw: raw["projects"]["snqxz"]["areas"]["hot_server"].update({"越南": ["vn"]}))
    assert lines == [f"{FILE}: projects.snqxz.areas.hot_server.越南: area code 'vn' has no game server in "
                     "projects.snqxz.inventory.vn.servers: every hot_server update of it would be refused"]


def test_hot_client_area_code_without_cdn_dirs_is_named():
    lines = _refused(lambda raw: raw["projects"]["ssss"]["inventory"]["cn"].update(cdn=[]))
    assert lines == [f"{FILE}: projects.ssss.areas.hot_client.大陆: area code 'cn' has no CDN dir in "
                     "projects.ssss.inventory.cn.cdn: every hot_client update of it would be refused"]


def test_inventory_of_a_code_that_no_area_lists_is_named():
    def misspelt(raw: dict[str, Any]) -> None:
        inventory = raw["projects"]["snqxz"]["inventory"]
        inventory["tw"] = copy.deepcopy(inventory["tw"])
        inventory["tw_new"] = copy.deepcopy(inventory["tw"])

    assert _refused(misspelt) == [f"{FILE}: projects.snqxz.inventory.tw_new: 'tw_new' is not an area code of "
                                  "projects.snqxz.areas: no update reaches this inventory (a misspelt code?)"]


def test_one_code_under_two_area_names_is_named():
    def twice(raw: dict[str, Any]) -> None:
        raw["projects"]["snqxz"]["areas"]["hot_server"]["大陆"] = ["tw"]
        raw["projects"]["snqxz"]["rsync_targets"].append(
            {**raw["projects"]["snqxz"]["rsync_targets"][0], "name": "snqxz_cn", "area": "大陆"})

    assert _refused(twice) == [f"{FILE}: projects.snqxz.areas.hot_server.大陆: area code 'tw' is also listed under "
                               "'台湾': the code cannot tell which area's rsync targets to use"]


def test_local_runner_serving_a_remote_ip_is_named():
    # The operator forgot `kind: ssh`: the local runner would "update" 10.1.1.1 on its own disk.
    lines = _refused(lambda raw: raw["ops_managers"]["ops2"].pop("runner"))
    assert lines == [f"{FILE}: projects.snqxz.inventory.tw.servers.game.10.1.1.1: ops manager 'ops2' updates this "
                     "area with the local runner, where an IP is only a placeholder in server_root on its own disk: "
                     "host 10.1.1.1 would be reported updated without being touched (set "
                     "ops_managers.ops2.runner.kind: ssh, or use 127.x addresses)"]


def test_local_runner_with_ssh_settings_is_named():
    lines = _refused(lambda raw: raw["ops_managers"]["ops1"].update(
        runner={"ssh_user": "deploy", "ssh_key": "/etc/hotupdate/id_ed25519"}))
    assert lines == [
        f"{FILE}: ops_managers.ops1.runner.ssh_user: deploy is set, but runner.kind is local, which never uses ssh "
        "(did you mean kind: ssh?)",
        f"{FILE}: ops_managers.ops1.runner.ssh_key: /etc/hotupdate/id_ed25519 is set, but runner.kind is local, "
        "which never uses ssh (did you mean kind: ssh?)",
    ]


def test_purge_command_of_a_project_the_ops_manager_does_not_serve_is_named():
    lines = _refused(lambda raw: raw["ops_managers"]["ops1"].update(purge_cmd={"snqxz": ["true"]}))
    assert lines == [f"{FILE}: ops_managers.ops1.purge_cmd.snqxz: ops manager 'ops1' does not serve project "
                     "'snqxz': the command would never run"]


def test_every_contradiction_is_listed_at_once():
    def many(raw: dict[str, Any]) -> None:
        raw["receivers"]["file_push9"]["projects"].append("ssss")
        raw["ops_managers"]["ops2"].pop("runner")
        raw["projects"]["ssss"]["inventory"]["cn"]["cdn"] = []

    keys = [line.split(": ")[1] for line in _refused(many)]
    assert keys == ["receivers.file_push9.projects", "projects.ssss.areas.hot_client.大陆",
                    "projects.snqxz.inventory.tw.servers.game.10.1.1.1"]


def test_an_ops_manager_no_target_names_and_an_area_without_target_are_warnings():
    raw = _base()
    raw["ops_managers"]["ops1"]["projects"].append("snqxz")
    raw["projects"]["snqxz"]["areas"]["hot_server"]["越南"] = ["vn"]
    raw["projects"]["snqxz"]["inventory"]["vn"] = {"servers": {"game": {"127.0.0.2": ["vn_1"]}}}
    warnings = {(f.where, f.message) for f in check_config(parse_config(raw, FILE), receiver="none")
                if f.level == "warning"}
    assert ("ops_managers.ops1.projects",
            "no rsync target of project 'snqxz' names ops manager 'ops1': it never receives snqxz's files") in warnings
    assert ("projects.snqxz.areas.hot_server.越南", "no rsync target has this area: its updates cannot be pushed") \
        in warnings


def test_config_check_prints_each_contradiction_as_an_error(tmp_path, capsys):
    import argparse

    raw = _base()
    raw["receivers"]["file_push9"]["projects"].append("ssss")
    raw["ops_managers"]["ops2"].pop("runner")
    path = tmp_path / "hotupdate.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["config", "check", "--config", str(path), "--no-broker"])
    assert args.func(args) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == (f"ERROR   {path}: receivers.file_push9.projects: project 'ssss' is also served by receiver "
                      "'file_push8': both would pull and push every update of it; a project has one version receiver")
    assert err[1].startswith(f"ERROR   {path}: projects.snqxz.inventory.tw.servers.game.10.1.1.1: ops manager 'ops2'")
    assert err[2] == "2 error(s): the configuration does not load"
