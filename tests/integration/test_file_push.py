"""file_push against a real rsync daemon: files land with their md5s, and every refusal says why."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest

from bus.contract.envelope import Envelope
from bus.contract.events import (
    FileEntry,
    FilesPulled,
    FilesPushed,
    PullRequested,
    PushFailed,
    PushRequested,
    RsyncTargetRef,
)
from bus.contract.registry import DEFAULT_REGISTRY, make_envelope
from bus.publisher import AsyncPublisher
from bus.topology import binding
from consumers.file_pull.handlers import handle_pull_requested
from consumers.file_pull.service import build_service as build_pull_service
from consumers.file_push.handlers import handle_push_requested
from consumers.file_push.service import build_service as build_push_service
from consumers.file_push.service import push_settings
from demo.rsyncd import RsyncDaemon, free_port
from domain.config import HotupdateConfig, parse_config
from domain.layout import incoming_dir, receiver_backup_dir
from tests.busprobe import Probe
from tests.recording import incoming

pytestmark = [pytest.mark.rsync]

UPDATE_ID = "350cf0ef-c12e-4bcc-d0df-369a09a4a357"
VERSION = "004200000"
FILES = {
    "ebin/role_server.beam": b"\x83beam" * 5000,
    "config/skill.config": "{skill, 1}.\n%% 技能\n".encode(),
    "a.txt": b"abc",
}


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _entries(files: dict[str, bytes] = FILES) -> list[FileEntry]:
    return [FileEntry(file_name=n, file_md5=_md5(d), size=len(d)) for n, d in sorted(files.items())]


def _config(tmp_path: Path, daemon: RsyncDaemon, *, pass_file: Path | None = None, extra_targets=(),
            amqp_url: str | None = None, timeout: float = 30) -> HotupdateConfig:
    target = {
        "name": "ssss_cn", "area": "大陆", "ip": daemon.ip, "port": daemon.port, "module": daemon.module,
        "user": daemon.user, "pass_file": str(pass_file or daemon.password_file(tmp_path)), "ops_manager": "ops1",
    }
    raw = {
        "broker": {"shared_user": "guest"},
        "projects": {
            "ssss": {
                "areas": {"hot_server": {"大陆": ["cn"]}, "hot_client": {"大陆": ["cn"]}},
                "rsync_targets": [target, *extra_targets],
                "inventory": {"cn": {"servers": {"game": {"127.0.0.1": ["qq_1"]}},
                                     "cdn": [{"cdn_root_url": "res.ssss.chuangyunet.com", "cdn_dir": "t1"}]}},
            }
        },
        "receivers": {
            "recv1": {
                "projects": ["ssss"],
                "version_root": str(tmp_path / "version_update"),
                "backup_root": str(tmp_path / "hot_backup"),
                "rsync_timeout_seconds": timeout,
            }
        },
        "ops_managers": {
            "ops1": {"projects": ["ssss"], "incoming_root": str(daemon.module_path),
                     "cdn_origin_root": str(tmp_path / "cdn")}
        },
    }
    if amqp_url:
        raw["amqp_url"] = amqp_url
    return parse_config(raw, tmp_path / "config.yaml")


def _backup(config: HotupdateConfig, files: dict[str, bytes] = FILES) -> Path:
    backup = receiver_backup_dir(config.receivers["recv1"].backup_root, "hot_server", "ssss", "cn", UPDATE_ID, VERSION)
    for name, data in files.items():
        (backup / name).parent.mkdir(parents=True, exist_ok=True)
        (backup / name).write_bytes(data)
    return backup


def _target(config: HotupdateConfig, name: str = "ssss_cn") -> RsyncTargetRef:
    t = next(t for t in config.projects["ssss"].rsync_targets if t.name == name)
    return RsyncTargetRef(name=t.name, ip=t.ip, port=t.port, module=t.module, user=t.user)


def _request(config: HotupdateConfig, files=None, targets=None) -> PushRequested:
    return PushRequested(
        update_type="hot_server", version=VERSION, files=files or _entries(),
        targets=targets or [_target(config)], requested_by="alice",
    )


async def _push(config: HotupdateConfig, event: PushRequested):
    msg, emitter = incoming(event, updateid=UPDATE_ID)
    await handle_push_requested(msg, emitter, settings=push_settings(config, "recv1"))
    return emitter.only


def _landed(daemon: RsyncDaemon) -> Path:
    return incoming_dir(daemon.module_path, "ssss", "cn", UPDATE_ID, VERSION)


async def test_push_lands_the_files_on_the_daemon_with_the_sources_md5s(tmp_path, rsync_daemon):
    config = _config(tmp_path, rsync_daemon)
    _backup(config)
    pushed = await _push(config, _request(config))
    assert isinstance(pushed, FilesPushed), pushed
    (result,) = pushed.targets
    assert result.ok and result.name == "ssss_cn" and result.error == ""
    assert result.bytes > len(FILES["ebin/role_server.beam"]) // 100  # compressed or not, something was sent
    assert result.seconds > 0
    landed = {str(p.relative_to(_landed(rsync_daemon))): _md5(p.read_bytes())
              for p in _landed(rsync_daemon).rglob("*") if p.is_file()}
    assert landed == {n: _md5(d) for n, d in FILES.items()}


async def test_push_sends_only_the_chosen_files(tmp_path, rsync_daemon):
    config = _config(tmp_path, rsync_daemon)
    _backup(config)
    chosen = [e for e in _entries() if e.file_name == "config/skill.config"]
    pushed = await _push(config, _request(config, files=chosen))
    assert isinstance(pushed, FilesPushed)
    assert [str(p.relative_to(_landed(rsync_daemon))) for p in _landed(rsync_daemon).rglob("*") if p.is_file()] == [
        "config/skill.config"
    ]


async def test_pulled_list_pushes_as_is(tmp_path, rsync_daemon):
    config = _config(tmp_path, rsync_daemon)
    reload = config.receivers["recv1"].version_root / "server/ssss/cn" / VERSION / "reloadfiles"
    for name, data in FILES.items():
        (reload / name).parent.mkdir(parents=True, exist_ok=True)
        (reload / name).write_bytes(data)
    pull = PullRequested(update_type="hot_server", version=VERSION, area_name="大陆", requested_by="alice")
    msg, emitter = incoming(pull, updateid=UPDATE_ID)
    await handle_pull_requested(msg, emitter, receiver=config.receivers["recv1"])
    pulled = emitter.only
    assert isinstance(pulled, FilesPulled)
    pushed = await _push(config, _request(config, files=pulled.files))
    assert isinstance(pushed, FilesPushed)
    for entry in pulled.files:
        assert _md5((_landed(rsync_daemon) / entry.file_name).read_bytes()) == entry.file_md5


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o400])
async def test_push_refuses_password_file_not_mode_600(tmp_path, rsync_daemon, mode):
    loose = rsync_daemon.password_file(tmp_path, mode=mode)
    config = _config(tmp_path, rsync_daemon, pass_file=loose)
    _backup(config)
    failed = await _push(config, _request(config))
    assert isinstance(failed, PushFailed)
    assert failed.failed_targets == ["ssss_cn"]
    assert failed.targets[0].error == f"password file {loose} has mode {mode:03o}; it must be 600 (chmod 600 {loose})"
    assert not _landed(rsync_daemon).exists()


async def test_push_refuses_missing_password_file(tmp_path, rsync_daemon):
    config = _config(tmp_path, rsync_daemon, pass_file=tmp_path / "absent.password")
    _backup(config)
    failed = await _push(config, _request(config))
    assert isinstance(failed, PushFailed)
    assert "absent.password does not exist" in failed.targets[0].error


async def test_wrong_password_fails_with_rsyncs_error(tmp_path, rsync_daemon):
    wrong = rsync_daemon.password_file(tmp_path, password="not-the-password")
    config = _config(tmp_path, rsync_daemon, pass_file=wrong)
    _backup(config)
    failed = await _push(config, _request(config))
    assert isinstance(failed, PushFailed)
    assert failed.failed_targets == ["ssss_cn"]
    assert "auth failed on module cmdb_hot_server" in failed.targets[0].error
    assert "[rsync exit code 5]" in failed.targets[0].error
    assert not _landed(rsync_daemon).exists()


async def test_target_down_fails_with_connection_refused(tmp_path, rsync_daemon):
    down = RsyncDaemon(tmp_path / "down", port=free_port())  # never started: nothing listens there
    config = _config(tmp_path, down, pass_file=rsync_daemon.password_file(tmp_path))
    _backup(config)
    failed = await _push(config, _request(config))
    assert isinstance(failed, PushFailed)
    assert "Connection refused" in failed.targets[0].error


async def test_one_target_down_fails_the_push_naming_only_that_target(tmp_path, rsync_daemon):
    down = {"name": "ssss_cn_down", "area": "大陆", "ip": "127.0.0.1", "port": free_port(), "module": "m",
            "user": "u", "pass_file": str(rsync_daemon.password_file(tmp_path)), "ops_manager": "ops1"}
    config = _config(tmp_path, rsync_daemon, extra_targets=[down])
    _backup(config)
    failed = await _push(config, _request(config, targets=[_target(config), _target(config, "ssss_cn_down")]))
    assert isinstance(failed, PushFailed)
    assert failed.failed_targets == ["ssss_cn_down"]
    assert failed.reason == "rsync failed for ssss_cn_down"
    assert {t.name: t.ok for t in failed.targets} == {"ssss_cn": True, "ssss_cn_down": False}
    assert (_landed(rsync_daemon) / "a.txt").read_bytes() == b"abc"


async def test_silent_daemon_times_out(tmp_path, rsync_daemon):
    # A listener that accepts and never speaks: rsync waits for the daemon greeting.
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    silent = RsyncDaemon(tmp_path / "silent", port=port)
    config = _config(tmp_path, silent, pass_file=rsync_daemon.password_file(tmp_path), timeout=1)
    _backup(config)
    try:
        failed = await _push(config, _request(config))
    finally:
        server.close()
    assert isinstance(failed, PushFailed)
    assert failed.targets[0].seconds < 10
    assert "timed out" in failed.targets[0].error


async def test_symlink_escaping_the_backup_dir_is_refused_and_nothing_is_sent(tmp_path, rsync_daemon):
    config = _config(tmp_path, rsync_daemon)
    backup = _backup(config)
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"abc")  # same md5 as a.txt: only the path check can stop it
    (backup / "a.txt").unlink()
    (backup / "a.txt").symlink_to(secret)
    failed = await _push(config, _request(config))
    assert isinstance(failed, PushFailed)
    assert "a.txt refused: it leads outside the backup directory" in failed.reason
    assert failed.failed_targets == ["ssss_cn"]
    assert not _landed(rsync_daemon).exists()


async def test_directory_symlink_escaping_the_backup_dir_is_refused(tmp_path, rsync_daemon):
    config = _config(tmp_path, rsync_daemon)
    backup = _backup(config, {"a.txt": b"abc"})
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "passwd").write_bytes(b"root:x:0:0")
    (backup / "etc").symlink_to(outside, target_is_directory=True)
    entry = FileEntry(file_name="etc/passwd", file_md5=_md5(b"root:x:0:0"), size=10)
    failed = await _push(config, _request(config, files=[entry]))
    assert isinstance(failed, PushFailed)
    assert "etc/passwd refused: it leads outside the backup directory" in failed.reason


async def test_symlink_inside_the_backup_dir_is_refused_too(tmp_path, rsync_daemon):
    config = _config(tmp_path, rsync_daemon)
    backup = _backup(config, {"a.txt": b"abc"})
    (backup / "b.txt").symlink_to("a.txt")
    entry = FileEntry(file_name="b.txt", file_md5=_md5(b"abc"), size=3)
    failed = await _push(config, _request(config, files=[entry]))
    assert isinstance(failed, PushFailed)
    assert "b.txt refused: it leads through a symlink" in failed.reason


async def test_file_changed_since_the_pull_is_refused(tmp_path, rsync_daemon):
    config = _config(tmp_path, rsync_daemon)
    backup = _backup(config)
    (backup / "a.txt").write_bytes(b"xyz")
    failed = await _push(config, _request(config))
    assert isinstance(failed, PushFailed)
    assert f"a.txt has md5 {_md5(b'xyz')}, not the {_md5(b'abc')} listed" in failed.reason
    assert not _landed(rsync_daemon).exists()


async def test_push_without_a_pulled_backup_is_refused(tmp_path, rsync_daemon):
    config = _config(tmp_path, rsync_daemon)
    failed = await _push(config, _request(config))
    assert isinstance(failed, PushFailed)
    assert "was the version pulled here?" in failed.reason


async def test_target_unknown_to_the_config_is_refused_and_nothing_is_sent(tmp_path, rsync_daemon):
    config = _config(tmp_path, rsync_daemon)
    _backup(config)
    rogue = RsyncTargetRef(name="rogue", ip="127.0.0.1", port=rsync_daemon.port, module=rsync_daemon.module,
                           user=rsync_daemon.user)
    failed = await _push(config, _request(config, targets=[_target(config), rogue]))
    assert isinstance(failed, PushFailed)
    assert "rogue: not an rsync target" in failed.reason
    assert set(failed.failed_targets) == {"ssss_cn", "rogue"}
    assert not _landed(rsync_daemon).exists()


async def test_target_pointing_at_another_daemon_than_configured_is_refused(tmp_path, rsync_daemon):
    config = _config(tmp_path, rsync_daemon)
    _backup(config)
    moved = _target(config).model_copy(update={"port": free_port()})
    failed = await _push(config, _request(config, targets=[moved]))
    assert isinstance(failed, PushFailed)
    assert "but the configuration has" in failed.reason


async def test_redelivered_push_succeeds_again_with_the_same_files(tmp_path, rsync_daemon):
    config = _config(tmp_path, rsync_daemon)
    _backup(config)
    first = await _push(config, _request(config))
    second = await _push(config, _request(config))
    assert isinstance(first, FilesPushed) and isinstance(second, FilesPushed)
    assert second.targets[0].bytes < first.targets[0].bytes  # --checksum: unchanged files are not resent
    assert (_landed(rsync_daemon) / "ebin/role_server.beam").read_bytes() == FILES["ebin/role_server.beam"]


@pytest.mark.rabbit
async def test_pull_then_push_through_the_broker_lands_files_on_the_daemon(amqp_url, tmp_path, rsync_daemon):
    config = _config(tmp_path, rsync_daemon, amqp_url=amqp_url)
    reload = config.receivers["recv1"].version_root / "server/ssss/cn" / VERSION / "reloadfiles"
    for name, data in FILES.items():
        (reload / name).parent.mkdir(parents=True, exist_ok=True)
        (reload / name).write_bytes(data)
    processed = f"sqlite:///{tmp_path / 'processed.db'}"
    services = [build_pull_service(config, "recv1", processed_url=processed),
                build_push_service(config, "recv1", processed_url=processed)]
    for service in services:
        await service.start()
    try:
        async with Probe(amqp_url) as probe, AsyncPublisher(amqp_url) as publisher:
            await probe.bind(binding(FilesPulled), binding(FilesPushed), binding(PushFailed))
            pull = make_envelope(
                PullRequested(update_type="hot_server", version=VERSION, area_name="大陆", requested_by="alice"),
                source="hotupdate/cmdb", updateid=UPDATE_ID, project="ssss", area="cn",
            )
            await publisher.publish(pull)
            (pulled_msg,) = await probe.wait_for(1)
            pulled_env = Envelope.from_bytes(pulled_msg.body)
            pulled = DEFAULT_REGISTRY.decode(pulled_env)
            assert isinstance(pulled, FilesPulled)
            push = make_envelope(
                _request(config, files=pulled.files), source="hotupdate/cmdb", updateid=UPDATE_ID, project="ssss",
                area="cn", sequence=pulled_env.sequence + 1, causationid=pulled_env.id,
            )
            await publisher.publish(push)
            messages = await probe.wait_for(2)
    finally:
        for service in services:
            await service.stop()
    pushed_env = Envelope.from_bytes(messages[1].body)
    assert pushed_env.causationid == push.id
    assert pushed_env.source == "hotupdate/file_push/recv1"
    pushed = DEFAULT_REGISTRY.decode(pushed_env)
    assert isinstance(pushed, FilesPushed), pushed
    for entry in pulled.files:
        assert _md5((_landed(rsync_daemon) / entry.file_name).read_bytes()) == entry.file_md5
