"""file_push's checks that need no I/O: targets against config, names, rsync arguments and stats."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from bus.contract.events import FileEntry, RsyncTargetRef
from consumers.file_push.rsync import DaemonModule, parse_bytes_sent, rsync_command
from consumers.file_push.targets import resolve_targets
from domain.config import ProjectConfig, RsyncTarget

MD5 = "d41d8cd98f00b204e9800998ecf8427e"


def _project() -> ProjectConfig:
    return ProjectConfig(
        areas={"hot_server": {"大陆": ["cn"], "台湾": ["tw"]}},
        rsync_targets=[
            RsyncTarget(name="cn", area="大陆", ip="127.0.0.1", port=10873, module="m", user="u",
                        pass_file=Path("/etc/cn.password"), ops_manager="ops1"),
            RsyncTarget(name="tw", area="台湾", ip="127.0.0.2", port=10873, module="m", user="u",
                        pass_file=Path("/etc/tw.password"), ops_manager="ops1"),
        ],
    )


def _ref(name="cn", ip="127.0.0.1", port=10873, module="m", user="u") -> RsyncTargetRef:
    return RsyncTargetRef(name=name, ip=ip, port=port, module=module, user=user)


def test_configured_target_resolves_to_the_configured_password_file():
    resolved, refused = resolve_targets(_project(), "hot_server", "cn", [_ref()])
    assert refused == []
    (target,) = resolved
    assert target.daemon.password_file == Path("/etc/cn.password")
    assert (target.daemon.ip, target.daemon.port, target.daemon.module) == ("127.0.0.1", 10873, "m")


def test_target_not_in_config_is_refused():
    resolved, refused = resolve_targets(_project(), "hot_server", "cn", [_ref(name="elsewhere")])
    assert resolved == []
    assert "not an rsync target" in refused[0].why


@pytest.mark.parametrize(
    "changes", [{"ip": "10.9.9.9"}, {"port": 22}, {"module": "other"}, {"user": "root"}]
)
def test_target_whose_daemon_differs_from_config_is_refused(changes):
    resolved, refused = resolve_targets(_project(), "hot_server", "cn", [_ref(**changes)])
    assert resolved == []
    assert "but the configuration has" in refused[0].why


def test_target_of_another_area_is_refused():
    resolved, refused = resolve_targets(_project(), "hot_server", "cn", [_ref(name="tw", ip="127.0.0.2")])
    assert resolved == []
    assert "does not include 'cn'" in refused[0].why


def test_target_named_twice_is_refused_once():
    resolved, refused = resolve_targets(_project(), "hot_server", "cn", [_ref(), _ref()])
    assert len(resolved) == 1
    assert refused[0].why == "named twice in the request"


@pytest.mark.parametrize("name", ["../etc/passwd", "/etc/passwd", "a/../../b", "a//b", "./a", "a\\b", ""])
def test_file_names_leaving_the_backup_are_refused_by_the_event_model(name):
    with pytest.raises(ValidationError):
        FileEntry(file_name=name, file_md5=MD5, size=0)


def test_rsync_command_is_an_argument_list_with_password_file_timeout_and_checksum():
    daemon = DaemonModule(ip="127.0.0.1", port=10873, module="cmdb_hot_server", user="cmdb_user",
                          password_file=Path("/etc/ssss.password"))
    cmd = rsync_command(daemon, Path("/data/hot_backup/hot_server"), io_timeout_seconds=7.5)
    assert cmd[0] == "rsync"
    assert "--checksum" in cmd
    assert "--password-file=/etc/ssss.password" in cmd
    assert "--timeout=8" in cmd
    assert "--files-from=-" in cmd and "--from0" in cmd
    assert cmd[-2:] == ["/data/hot_backup/hot_server/", "rsync://cmdb_user@127.0.0.1:10873/cmdb_hot_server/"]


def test_daemon_url_brackets_ipv6_and_appends_remote_dir():
    daemon = DaemonModule(ip="::1", port=873, module="m", user="u", password_file=Path("/p"))
    assert daemon.url("ssss/cn/") == "rsync://u@[::1]:873/m/ssss/cn/"


@pytest.mark.parametrize(
    ("stats", "expected"),
    [
        ("Total bytes sent: 1,234,567\nTotal bytes received: 35\n", 1234567),
        ("Total bytes sent: 186\n", 186),
        ("Total bytes sent: 1.234\n", 1234),
        ("sent 186 bytes  received 47 bytes\n", 0),
    ],
)
def test_bytes_sent_are_read_from_rsync_stats(stats, expected):
    assert parse_bytes_sent(stats) == expected
