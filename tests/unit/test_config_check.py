"""`hotupdate config check` finds what is wrong on the machine, naming the key and the fix."""

from __future__ import annotations

import os
from pathlib import Path

from domain.config import parse_config
from domain.config_check import check_config, password_file_finding


def _config(tmp_path: Path, pass_mode: int = 0o600):
    (tmp_path / "versions" / "server" / "x").mkdir(parents=True)
    os.symlink(tmp_path / "versions" / "server" / "x", tmp_path / "versions" / "server" / "ssss")
    (tmp_path / "backup").mkdir()
    pw = tmp_path / "ssss.password"
    pw.write_text("secret\n")
    pw.chmod(pass_mode)
    raw = {
        "projects": {"ssss": {"areas": {"hot_server": {"大陆": ["cn"]}}, "rsync_targets": [
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
    assert messages == [f"{tmp_path}/incoming does not exist", f"{tmp_path}/cdn does not exist"]


def test_missing_password_file_is_an_error(tmp_path):
    finding = password_file_finding("x", tmp_path / "nope")
    assert finding.level == "error" and "is missing" in finding.message
