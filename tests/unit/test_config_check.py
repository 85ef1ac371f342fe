"""`hotupdate config check` finds what is wrong on the machine, naming the key and the fix."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from domain.config import ConfigError, parse_config
from domain.config_check import check_config, cookie_file_finding, password_file_finding

INVENTORY = {"cn": {"servers": {"game": {"127.0.0.1": ["qq_1"]}}}}


def _config(tmp_path: Path, pass_mode: int = 0o600):
    (tmp_path / "versions" / "server" / "x").mkdir(parents=True)
    os.symlink(tmp_path / "versions" / "server" / "x", tmp_path / "versions" / "server" / "ssss")
    (tmp_path / "backup").mkdir()
    pw = tmp_path / "ssss.password"
    pw.write_text("secret\n")
    pw.chmod(pass_mode)
    raw = {
        "projects": {"ssss": {"areas": {"hot_server": {"大陆": ["cn"]}}, "inventory": INVENTORY, "rsync_targets": [
            {"name": "t", "area": "大陆", "ip": "127.0.0.1", "module": "m", "user": "u",
             "pass_file": "ssss.password", "ops_manager": "ops1"}]}},
        "receivers": {"r1": {"projects": ["ssss"], "version_root": "versions", "backup_root": "backup"}},
        "ops_managers": {"ops1": {"projects": ["ssss"], "incoming_root": "incoming", "cdn_origin_root": "cdn"}},
    }
    return parse_config(raw, tmp_path / "hotupdate.yaml")


def test_password_file_readable_by_others_is_an_error_with_the_fix(tmp_path):
    config = _config(tmp_path, pass_mode=0o644)
    errors = [str(f) for f in check_config(config, receiver="r1") if f.level == "error"]
    assert errors == [f"ERROR   projects.ssss.rsync_targets.t.pass_file: password file {tmp_path}/ssss.password "
                      f"has mode 644; it must be 600 (chmod 600 {tmp_path}/ssss.password)"]


def test_a_well_set_up_receiver_has_no_errors_and_the_symlinked_project_dir_counts(tmp_path):
    config = _config(tmp_path)
    findings = check_config(config, receiver="r1")
    assert [f for f in findings if f.level == "error"] == []
    assert not any("versions/server/ssss does not exist" in f.message for f in findings)


def test_missing_ops_manager_directories_are_named(tmp_path):
    config = _config(tmp_path)
    messages = [f.message for f in check_config(config, ops_manager="ops1") if f.level == "error"]
    assert messages == [f"{tmp_path}/incoming does not exist", f"{tmp_path}/cdn does not exist",
                        "not set: hot_server updates cannot run Erlang commands (name a file holding the cookie, "
                        "mode 600)"]


def test_missing_password_file_is_an_error(tmp_path):
    finding = password_file_finding("x", tmp_path / "nope")
    assert finding.level == "error" and "is missing" in finding.message


def _ssh_config(tmp_path: Path, runner: dict[str, object]):
    (tmp_path / "incoming").mkdir(exist_ok=True)
    (tmp_path / "cdn").mkdir(exist_ok=True)
    raw = {
        "projects": {"ssss": {"areas": {"hot_server": {"大陆": ["cn"]}}, "inventory": INVENTORY}},
        "ops_managers": {"ops1": {"projects": ["ssss"], "incoming_root": "incoming", "cdn_origin_root": "cdn",
                                  "runner": {"kind": "ssh", **runner}}},
    }
    return parse_config(raw, tmp_path / "hotupdate.yaml")


def test_ssh_key_others_can_read_is_an_error_naming_the_fix(tmp_path):
    key = tmp_path / "keys" / "id_ed25519"
    key.parent.mkdir()
    key.write_text("k")
    key.chmod(0o644)
    (tmp_path / "known_hosts").write_text("")
    config = _ssh_config(tmp_path, {"ssh_key": "keys/id_ed25519", "ssh_known_hosts": "known_hosts"})
    assert config.ops_managers["ops1"].runner.ssh_key == key  # relative paths resolve beside the config file
    errors = [str(f) for f in check_config(config, ops_manager="ops1") if f.level == "error"]
    assert errors == [f"ERROR   ops_managers.ops1.runner.ssh_key: ssh key {key} has mode 644; ssh ignores it "
                      f"unless only its owner can read it (chmod 600 {key})"]
    key.chmod(0o600)
    assert [f for f in check_config(config, ops_manager="ops1") if f.level != "ok" and ".runner." in f.where] == []


def test_ssh_without_pinned_host_keys_warns_and_a_missing_known_hosts_file_is_an_error(tmp_path):
    unpinned = check_config(_ssh_config(tmp_path, {"ssh_user": "deploy"}), ops_manager="ops1")
    assert [(f.level, f.where) for f in unpinned if f.level != "ok" and ".runner." in f.where] == [
        ("warning", "ops_managers.ops1.runner.ssh_known_hosts")]
    assert "user running the ops executor" in next(f.message for f in unpinned if f.level == "warning")
    missing = check_config(_ssh_config(tmp_path, {"ssh_known_hosts": "nope"}), ops_manager="ops1")
    assert [str(f) for f in missing if f.level == "error"] == [
        f"ERROR   ops_managers.ops1.runner.ssh_known_hosts: {tmp_path}/nope does not exist"]


def test_local_runner_has_no_ssh_findings(tmp_path):
    raw_dirs = [tmp_path / "incoming", tmp_path / "cdn"]
    for d in raw_dirs:
        d.mkdir()
    config = parse_config({"projects": {"ssss": {"areas": {"hot_server": {"大陆": ["cn"]}}, "inventory": INVENTORY}},
                           "ops_managers": {"ops1": {"projects": ["ssss"], "incoming_root": "incoming",
                                                     "cdn_origin_root": "cdn"}}}, tmp_path / "hotupdate.yaml")
    assert not any("ssh" in f.where for f in check_config(config, ops_manager="ops1"))


def _cookie_config(tmp_path: Path, mode: int | None, content: str = "s3cr3t_cookie\n"):
    (tmp_path / "incoming").mkdir(exist_ok=True)
    (tmp_path / "cdn").mkdir(exist_ok=True)
    if mode is not None:
        (tmp_path / "erlang.cookie").write_text(content)
        (tmp_path / "erlang.cookie").chmod(mode)
    raw = {
        "projects": {"ssss": {"areas": {"hot_server": {"大陆": ["cn"]}}, "erlang_cookie_file": "erlang.cookie",
                              "inventory": {"cn": {"servers": {"game": {"127.0.0.1": ["qq_1"]}}}}}},
        "ops_managers": {"ops1": {"projects": ["ssss"], "incoming_root": "incoming", "cdn_origin_root": "cdn"}},
    }
    return parse_config(raw, tmp_path / "hotupdate.yaml")


def _cookie_findings(config):
    return [f for f in check_config(config, ops_manager="ops1") if f.where == "projects.ssss.erlang_cookie_file"]


def test_an_erlang_cookie_file_others_may_read_is_an_error_with_the_fix(tmp_path):
    (finding,) = _cookie_findings(_cookie_config(tmp_path, 0o644))
    assert finding.level == "error"
    assert finding.message == (f"Erlang cookie file {tmp_path}/erlang.cookie has mode 644; it must be 600 "
                               f"(chmod 600 {tmp_path}/erlang.cookie)")


def test_a_missing_erlang_cookie_file_is_an_error(tmp_path):
    (finding,) = _cookie_findings(_cookie_config(tmp_path, None))
    assert finding.level == "error" and finding.message == f"Erlang cookie file {tmp_path}/erlang.cookie is missing"


def test_an_erlang_cookie_file_that_holds_no_cookie_is_an_error(tmp_path):
    (finding,) = _cookie_findings(_cookie_config(tmp_path, 0o600, content="two words\n"))
    assert finding.level == "error" and "not a cookie" in finding.message


def test_a_mode_600_erlang_cookie_file_is_ok_and_the_cookie_is_not_shown(tmp_path):
    (finding,) = _cookie_findings(_cookie_config(tmp_path, 0o600))
    assert finding.level == "ok" and "mode 600" in finding.message and "s3cr3t" not in str(finding)


def test_an_unset_cookie_file_is_an_error_only_where_erlang_commands_run(tmp_path):
    assert cookie_file_finding("w", None).level == "error"
    assert cookie_file_finding("w", None, hot_server=False).level == "ok"


def test_an_inline_cookie_in_the_configuration_is_refused_naming_the_file_key(tmp_path):
    raw = {"projects": {"ssss": {"areas": {"hot_server": {"大陆": ["cn"]}}, "erlang_cookie": "hotupdate"}}}
    with pytest.raises(ConfigError, match="erlang_cookie_file"):
        parse_config(raw, tmp_path / "hotupdate.yaml")
