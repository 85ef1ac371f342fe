"""config/example.yaml reproduces the seed's rsync.py, and a broken config says where and what."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from domain.config import ConfigError, load_config

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "example.yaml"


def test_example_config_has_the_seeds_area_maps():
    config = load_config(EXAMPLE)
    assert config.projects["ssss"].area_codes("hot_server", "大陆") == ["cn"]
    snqxz = config.projects["snqxz"]
    for update_type in ("hot_client", "hot_server"):
        assert {name: snqxz.area_codes(update_type, name) for name in ("大陆", "台湾", "越南")} == {
            "大陆": ["cn"], "台湾": ["tw"], "越南": ["vn"],
        }


def test_example_config_has_the_seeds_rsync_managers_on_loopback():
    config = load_config(EXAMPLE)
    targets = {(p, t.area): t for p, proj in config.projects.items() for t in proj.rsync_targets}
    seed = {("ssss", "大陆"), ("snqxz", "大陆"), ("snqxz", "台湾"), ("snqxz", "越南")}
    assert set(targets) == seed | {("jyjh", "大陆"), ("csxy", "大陆")}  # the last two are placeholders
    ssss = targets[("ssss", "大陆")]
    assert (ssss.ip, ssss.port, ssss.module, ssss.user) == ("127.0.0.1", 10873, "cmdb_hot_server", "cmdb_user")
    assert ssss.pass_file == Path("/etc/ssss.password")
    assert all(t.ip.startswith("127.") and t.ops_manager == "ops1" for t in targets.values())


def test_example_config_receiver_serves_the_seeds_queue_map_whole_with_the_seeds_roots():
    config = load_config(EXAMPLE)
    assert set(config.projects) == {"jyjh", "snqxz", "ssss", "csxy"}
    receiver = config.receivers["file_push8"]
    assert {n: r.projects for n, r in config.receivers.items()} == {"file_push8": ["jyjh", "snqxz", "ssss", "csxy"]}
    assert receiver.version_root == Path("/data/version_update")
    assert receiver.backup_root == Path("/data/hot_backup")
    assert config.receiver_for("snqxz") == "file_push8"


def test_example_config_inventory_and_cdn_dirs():
    config = load_config(EXAMPLE)
    cn = config.projects["ssss"].inventory["cn"]
    assert set(cn.servers) == {"game", "cross", "cross_center"}
    assert cn.servers["game"]["127.0.0.1"] == ["qq_1", "qq_2"]
    assert [(c.cdn_root_url, c.cdn_dir) for c in cn.cdn] == [
        ("res.ssss.chuangyunet.com", d) for d in ("t1", "test_r1", "s1", "r1")
    ]
    assert set(config.projects["snqxz"].inventory) == {"cn", "tw", "vn"}
    for placeholder in ("jyjh", "csxy"):
        inventory = config.projects[placeholder].inventory["cn"]
        assert set(inventory.servers) == {"game", "cross", "cross_center"} and inventory.cdn
    ops1 = config.ops_managers["ops1"]
    assert ops1.incoming_root.is_absolute() and ops1.cdn_origin_root.is_absolute()


def _broken(tmp_path: Path, mutate) -> Path:
    raw = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    mutate(raw)
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    return path


def test_broken_config_error_names_file_key_and_problem(tmp_path):
    path = _broken(tmp_path, lambda raw: raw["projects"]["ssss"]["rsync_targets"][0].update(port="not-a-port"))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert str(path) in message
    assert "projects.ssss.rsync_targets.0.port" in message
    assert "integer" in message


def test_receiver_serving_an_unknown_project_is_named(tmp_path):
    path = _broken(tmp_path, lambda raw: raw["receivers"]["file_push8"]["projects"].append("xyz"))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert str(path) in message
    assert "receivers.file_push8.projects" in message
    assert "unknown project 'xyz'" in message


def test_unreadable_config_file_is_named(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=r"nope\.yaml: cannot read"):
        load_config(missing)
