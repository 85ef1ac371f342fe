"""Templates, erl_call output, IP units and refusal: the ops executor's pure logic."""

from __future__ import annotations

import pytest

from bus.contract.events import UpdateRequested, UpdateServerList
from consumers.ops_executor.executor import refusal, summary
from consumers.ops_executor.hot_server import ip_units
from consumers.ops_executor.templates import (
    ServerTemplates,
    TemplateError,
    check_purge_template,
    erl_expression,
    erl_output_failed,
    fill,
    purge_argv,
)
from domain.config import RunnerConfig
from tests.ops_world import envelope_of


def test_fill_keeps_one_argument_per_template_argument_whatever_the_value():
    argv = fill(["cp", "{src}", "{dest}/ebin"], {"src": "a b;rm -rf /", "dest": "$(x)"})
    assert argv == ["cp", "a b;rm -rf /", "$(x)/ebin"]


@pytest.mark.parametrize("template", [["erl_call", "{nope}"], ["x", "{server!r}"], ["x", "{server:>9}"], []])
def test_templates_with_unknown_or_formatted_placeholders_are_refused_up_front(template):
    with pytest.raises(TemplateError):
        ServerTemplates.of(RunnerConfig(erl_cmd=template))


def test_default_erl_command_sends_the_expression_on_stdin_terminated_and_no_cookie():
    templates = ServerTemplates.of(RunnerConfig())
    argv, stdin = templates.erl_argv({"server": "qq_1"}, "c:l(mod)")
    assert argv == ["erl_call", "-sname", "qq_1", "-e"]  # the cookie comes from $HOME/.erlang.cookie
    assert stdin == b"c:l(mod).\n"


def test_an_erl_template_that_would_put_the_cookie_on_the_command_line_is_refused():
    with pytest.raises(TemplateError, match="cookie"):
        ServerTemplates.of(RunnerConfig(erl_cmd=["erl_call", "-sname", "{server}", "-c", "{cookie}", "-e"]))


def test_erl_template_with_command_placeholder_passes_it_as_one_argument():
    templates = ServerTemplates.of(RunnerConfig(erl_cmd=["my_erl", "{server}", "{command}"]))
    argv, stdin = templates.erl_argv({"server": "qq_1"}, "io:format(\"a b\")")
    assert argv == ["my_erl", "qq_1", 'io:format("a b")'] and stdin is None


def test_erl_expression_is_not_terminated_twice():
    assert erl_expression(" c:l(mod). ") == "c:l(mod).\n"


@pytest.mark.parametrize(
    ("stdout", "failed"),
    [
        ("{ok, {module,mod}}", False),
        ("{ok, ok}", False),
        ('{error, "Incomplete form (missing .<cr>)??"}', True),
        ("{ok, {error,nofile}}", True),
        ("{badrpc,nodedown}", True),
        ("{ok, [{error,x}]}", False),
    ],
)
def test_erl_call_output_that_reports_an_error_counts_as_failure(stdout, failed):
    assert erl_output_failed(stdout) is failed


def test_purge_files_placeholder_expands_to_one_argument_per_file():
    template = ["purge", "--host", "{cdn_root_url}", "{files}"]
    check_purge_template("purge_cmd.ssss", template)
    assert purge_argv(template, {"cdn_root_url": "res.x.com"}, ["a.txt", "b c.png"]) == [
        "purge", "--host", "res.x.com", "a.txt", "b c.png"]
    with pytest.raises(TemplateError):
        check_purge_template("purge_cmd.ssss", ["purge", "--files={files}"])


def test_ip_units_tell_apart_an_ip_that_serves_several_groups():
    units = ip_units({"game": {"10.1.1.1": ["qq_1"], "10.1.1.2": ["qq_3"]}, "cross": {"10.1.1.1": ["cross_1"]}})
    assert [(u.group, u.ip, u.key) for u in units] == [
        ("game", "10.1.1.1", "10.1.1.1/game"), ("game", "10.1.1.2", "10.1.1.2"),
        ("cross", "10.1.1.1", "10.1.1.1/cross")]


def _request(servers: UpdateServerList) -> UpdateRequested:
    return UpdateRequested.model_construct(
        update_type="hot_server", version="1", ops_manager="om1", update_file_list=[], requested_by="t",
        update_server_list=servers, erlang_cmd_list=[], data=None, client_type=None)


@pytest.mark.parametrize("bad", ["qq_1;reboot", "$(id)", "a b", "../etc", "-oProxyCommand=x"])
def test_refusal_names_a_server_name_that_could_reach_a_shell_or_a_path(bad):
    good = UpdateRequested.model_validate({
        "update_type": "hot_server", "version": "1", "ops_manager": "om1", "requested_by": "t",
        "update_file_list": [{"file_name": "a.beam", "file_md5": "0" * 32, "size": 1}],
        "update_server_list": {"game": {"10.1.1.1": ["qq_1"]}}})
    env = envelope_of(good, "u-1")
    assert refusal(good, env, {"ssss": object()}) is None
    assert refusal(_request({"game": {"10.1.1.1": [bad]}}), env, {"ssss": object()}) is not None
    assert refusal(_request({"game": {"10.1.1.1; id": ["qq_1"]}}), env, {"ssss": object()}) is not None
    assert "不由本运维管理机负责" in (refusal(good, env, {}) or "")


def test_summary_says_all_done_or_names_the_failures():
    assert summary([], 3) == "全部完成"
    assert summary(["10.1.1.1/qq_1(erl失败)"], 3) == "1/3 失败: 10.1.1.1/qq_1(erl失败)"
    assert summary([f"s{i}" for i in range(25)], 30).endswith("等25个")
