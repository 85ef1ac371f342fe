"""What an update may run and touch (domain/allowed.py), and the Erlang cookie's private HOME."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from domain.allowed import DEFAULT_ERLANG_CMD_ALLOWED, cdn_refusals, command_refusals, server_refusals
from domain.config import AreaInventory, ConfigError, parse_config
from domain.erlang_cookie import CookieError, ErlangHomes, read_cookie


@pytest.mark.parametrize("command", [
    "c:l(role_server).", "c:l(role_server)", " c:l(mail_server) . ", "l(role_server).", "c:lm().",
    "code:soft_purge(role_server).", "code:load_file(role_server)",
])
def test_default_forms_admit_hot_loading_a_named_module(command):
    assert command_refusals([command], DEFAULT_ERLANG_CMD_ALLOWED) == []


@pytest.mark.parametrize("command", [
    'os:cmd("id").', "os:cmd('id')", 'open_port({spawn, "id"}, [])', "c:l(role_server), os:cmd(\"id\")",
    "c:l(role_server).\nos:cmd(\"id\").", "c:l(Role)", "c:l('role server')", "erlang:halt().", "init:stop()",
    "role_server:bump()", "c:l(role_server)..", "rpc:call(other@host, os, cmd, [\"id\"])", "",
])
def test_default_forms_refuse_anything_else_naming_the_field(command):
    (refusal,) = command_refusals(["c:l(ok)", command], DEFAULT_ERLANG_CMD_ALLOWED)
    assert refusal.field == "erlang_cmd_list[1]" and refusal.value == command
    assert str(refusal).startswith("erlang_cmd_list[1]: ")


INVENTORY = AreaInventory.model_validate({
    "servers": {"game": {"10.0.0.1": ["qq_1", "qq_2"], "10.0.0.2": ["qq_3"]}, "cross": {"10.0.0.9": ["cross_1"]}},
    "cdn": [{"cdn_root_url": "res.x.com", "cdn_dir": "t1"}],
})


def test_servers_must_be_on_their_ip_in_their_group():
    assert server_refusals({"game": {"10.0.0.1": ["qq_2"]}, "cross": {"10.0.0.9": ["cross_1"]}}, INVENTORY) == []
    refused = server_refusals({"game": {"10.0.0.1": ["qq_3"], "10.0.0.7": ["qq_1"]}, "cross": {"10.0.0.1": ["qq_1"]},
                               "cross_center": {"10.0.0.9": ["cross_1"]}}, INVENTORY)
    assert [(r.field, r.value) for r in refused] == [
        ("update_server_list[game][10.0.0.1][0]", "qq_3"), ("update_server_list[game][10.0.0.7]", "10.0.0.7"),
        ("update_server_list[cross][10.0.0.1]", "10.0.0.1"), ("update_server_list[cross_center]", "cross_center")]
    assert [r.field for r in server_refusals({"game": {"10.0.0.1": ["qq_1"]}}, None)] == ["update_server_list[game]"]


def test_cdn_dirs_must_be_configured_with_their_root():
    assert cdn_refusals([("res.x.com", "t1")], INVENTORY) == []
    assert [str(r) for r in cdn_refusals([("res.x.com", "t1"), ("evil.com", "t1"), ("res.x.com", "t2")], INVENTORY)] \
        == ["data[1]: 'evil.com/t1' is not a CDN dir of the inventory",
            "data[2]: 'res.x.com/t2' is not a CDN dir of the inventory"]


def _project(**fields: object) -> dict[str, object]:
    return {"projects": {"ssss": {"areas": {"hot_server": {"大陆": ["cn"]}},
                                  "inventory": {"cn": {"servers": {"game": {"127.0.0.1": ["qq_1"]}}}}, **fields}}}


def test_the_configured_default_commands_must_themselves_be_allowed(tmp_path):
    with pytest.raises(ConfigError, match=r"erlang_cmd_list\[0\]: 'os:cmd"):
        parse_config(_project(erlang_cmd_list=['os:cmd("id").']), tmp_path / "c.yaml")
    config = parse_config(_project(erlang_cmd_list=["user_default:reload()."],
                                   erlang_cmd_allowed=[r"user_default:reload\(\)"]), tmp_path / "c.yaml")
    assert config.projects["ssss"].erlang_cmd_allowed == [r"user_default:reload\(\)"]


def test_an_allowed_form_that_is_not_a_regular_expression_is_refused_at_load(tmp_path):
    with pytest.raises(ConfigError, match=r"erlang_cmd_allowed\[1\]: not a valid regular expression"):
        parse_config(_project(erlang_cmd_allowed=["c:l\\(x\\)", "c:l(("]), tmp_path / "c.yaml")


def test_the_cookie_reaches_erlang_through_a_private_home_only(tmp_path):
    cookie_file = tmp_path / "cookie"
    cookie_file.write_text("abc_123\n")
    cookie_file.chmod(0o600)
    homes = ErlangHomes({"ssss": cookie_file})
    home = homes.get("ssss")
    assert home is not None and homes.get("other") is None
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert stat.S_IMODE((home / ".erlang.cookie").stat().st_mode) == 0o400
    assert (home / ".erlang.cookie").read_text() == "abc_123"
    homes.close()
    assert not home.exists()


@pytest.mark.parametrize(("mode", "content", "why"), [
    (0o644, "abc", "has mode 644; it must be 600"), (0o640, "abc", "has mode 640"),
    (0o600, "", "not a cookie"), (0o600, "a b", "not a cookie"),
])
def test_a_cookie_file_others_may_read_or_without_a_cookie_is_refused(tmp_path, mode, content, why):
    path = tmp_path / "cookie"
    path.write_text(content)
    path.chmod(mode)
    with pytest.raises(CookieError, match=why):
        read_cookie(path)
    with pytest.raises(CookieError):
        ErlangHomes({"ssss": path})


def test_a_missing_cookie_file_is_refused(tmp_path):
    with pytest.raises(CookieError, match="cannot read"):
        read_cookie(Path(tmp_path / "nope"))
