"""file_pull against a real filesystem: copies, md5s, failures, redelivery; and once through the broker."""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
from pathlib import Path

import pytest

from bus.contract.envelope import Envelope
from bus.contract.events import FilesPulled, PullFailed, PullRequested
from bus.contract.registry import DEFAULT_REGISTRY, make_envelope
from bus.publisher import AsyncPublisher
from bus.topology import binding
from consumers.file_pull import copy as copy_module
from consumers.file_pull.handlers import handle_pull_requested
from consumers.file_pull.service import build_service
from domain.config import ReceiverConfig, parse_config
from tests.busprobe import Probe
from tests.recording import incoming

UPDATE_ID = "350cf0ef-c12e-4bcc-d0df-369a09a4a357"
VERSION = "004200000"
REQUEST = PullRequested(update_type="hot_server", version=VERSION, area_name="大陆", requested_by="alice")
FILES = {
    "ebin/role_server.beam": b"\x83beam" * 1000,
    "config/skill.config": "{skill, 1}.\n%% 技能\n".encode(),
    "top.txt": b"",
}


@pytest.fixture
def receiver(tmp_path) -> ReceiverConfig:
    """The seed's layout: server/ssss is a symlink to server/x, which holds the versions."""
    version_root = tmp_path / "version_update"
    (version_root / "server" / "x").mkdir(parents=True)
    (version_root / "server" / "ssss").symlink_to(version_root / "server" / "x", target_is_directory=True)
    return ReceiverConfig(projects=["ssss"], version_root=version_root, backup_root=tmp_path / "hot_backup")


def _write_version(receiver: ReceiverConfig, files: dict[str, bytes], version: str = VERSION) -> Path:
    reload = receiver.version_root / "server" / "x" / "cn" / version / "reloadfiles"
    reload.mkdir(parents=True)
    for name, data in files.items():
        (reload / name).parent.mkdir(parents=True, exist_ok=True)
        (reload / name).write_bytes(data)
    return reload


def _backup(receiver: ReceiverConfig) -> Path:
    return receiver.backup_root / "hot_server" / "ssss" / "cn" / UPDATE_ID / VERSION


async def _pull(receiver: ReceiverConfig, event: PullRequested = REQUEST, **kw):
    msg, emitter = incoming(event, updateid=UPDATE_ID, **kw)
    await handle_pull_requested(msg, emitter, receiver=receiver)
    return emitter.only


async def test_pull_copies_the_version_through_a_symlinked_project_dir_and_lists_md5s(receiver):
    _write_version(receiver, FILES)
    pulled = await _pull(receiver)
    assert isinstance(pulled, FilesPulled)
    assert pulled.source_dir == str(receiver.version_root / "server/ssss/cn" / VERSION / "reloadfiles")
    assert pulled.backup_dir == str(_backup(receiver))
    assert [(f.file_name, f.file_md5, f.size) for f in pulled.files] == [
        (name, hashlib.md5(FILES[name]).hexdigest(), len(FILES[name])) for name in sorted(FILES)
    ]
    assert pulled.total_bytes == sum(len(d) for d in FILES.values())
    for name, data in FILES.items():
        assert (_backup(receiver) / name).read_bytes() == data
        assert not (_backup(receiver) / name).is_symlink()
    # nothing half-written is left beside the backup
    assert sorted(p.name for p in _backup(receiver).parent.iterdir()) == [VERSION]


async def test_large_file_is_copied_and_hashed_in_chunks(receiver):
    big = os.urandom(3 * 1024 * 1024 + 17)
    _write_version(receiver, {"res/big.pak": big})
    pulled = await _pull(receiver)
    assert isinstance(pulled, FilesPulled)
    assert pulled.files[0].file_md5 == hashlib.md5(big).hexdigest()
    assert (_backup(receiver) / "res/big.pak").read_bytes() == big


async def test_missing_version_fails_with_version_missing_naming_the_version_dir(receiver):
    (receiver.version_root / "server" / "x" / "cn").mkdir()
    failed = await _pull(receiver)
    assert isinstance(failed, PullFailed)
    assert failed.reason == "version_missing"
    assert failed.detail == f"{receiver.version_root / 'server/ssss/cn' / VERSION} does not exist"
    assert not receiver.backup_root.exists()


async def test_version_without_files_fails_with_empty(receiver):
    reload = _write_version(receiver, {})
    (reload / "only_a_dir").mkdir()
    failed = await _pull(receiver)
    assert isinstance(failed, PullFailed)
    assert failed.reason == "empty"
    assert not _backup(receiver).exists()


async def test_dangling_symlink_in_version_fails_as_unreadable(receiver):
    reload = _write_version(receiver, {"a.txt": b"a"})
    (reload / "gone.txt").symlink_to(reload / "missing.txt")
    failed = await _pull(receiver)
    assert isinstance(failed, PullFailed)
    assert failed.reason == "unreadable"
    assert "gone.txt is a dangling symlink" in failed.detail


async def test_symlink_leaving_the_version_dir_is_not_copied(receiver, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("do not copy")
    reload = _write_version(receiver, {"a.txt": b"a"})
    (reload / "leak.txt").symlink_to(secret)
    failed = await _pull(receiver)
    assert isinstance(failed, PullFailed)
    assert failed.reason == "unreadable"
    assert "leak.txt is a symlink pointing outside" in failed.detail
    assert not _backup(receiver).exists()


async def test_symlink_inside_the_version_dir_is_copied_as_a_file(receiver):
    reload = _write_version(receiver, {"a.txt": b"content"})
    (reload / "alias.txt").symlink_to("a.txt")
    pulled = await _pull(receiver)
    assert isinstance(pulled, FilesPulled)
    assert [f.file_name for f in pulled.files] == ["a.txt", "alias.txt"]
    assert not (_backup(receiver) / "alias.txt").is_symlink()
    assert (_backup(receiver) / "alias.txt").read_bytes() == b"content"


async def test_special_file_in_version_fails_as_unreadable_instead_of_blocking(receiver):
    reload = _write_version(receiver, {"a.txt": b"a"})
    os.mkfifo(reload / "pipe")
    failed = await _pull(receiver)
    assert isinstance(failed, PullFailed)
    assert failed.reason == "unreadable"
    assert "pipe is not a regular file or directory" in failed.detail


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
async def test_unreadable_version_dir_fails_as_unreadable(receiver):
    reload = _write_version(receiver, {"a.txt": b"a"})
    reload.chmod(0)
    try:
        failed = await _pull(receiver)
    finally:
        reload.chmod(stat.S_IRWXU)
    assert isinstance(failed, PullFailed)
    assert failed.reason == "unreadable"


async def test_redelivery_relists_the_completed_backup_without_copying_again(receiver, monkeypatch):
    reload = _write_version(receiver, FILES)
    first = await _pull(receiver)
    copied_at = {p: p.stat().st_ino for p in _backup(receiver).rglob("*")}
    # The source changes afterwards; the update keeps what was pulled the first time.
    (reload / "top.txt").write_bytes(b"changed later")

    def no_copy(*args, **kwargs):
        raise AssertionError("copied a second time")

    monkeypatch.setattr("consumers.file_pull.pull.copy_atomically", no_copy)
    second = await _pull(receiver, redelivered=True)
    assert second == first
    assert {p: p.stat().st_ino for p in _backup(receiver).rglob("*")} == copied_at


async def test_copy_interrupted_midway_leaves_no_backup_and_a_retry_completes(receiver, monkeypatch):
    _write_version(receiver, FILES)
    real_copy_one = copy_module._copy_one
    calls = 0

    def failing_second_file(source, tmp):
        nonlocal calls
        calls += 1
        if calls == 2:
            raise OSError(28, "No space left on device")
        return real_copy_one(source, tmp)

    monkeypatch.setattr(copy_module, "_copy_one", failing_second_file)
    failed = await _pull(receiver)
    assert isinstance(failed, PullFailed)
    assert failed.reason == "error"
    assert "No space left on device" in failed.detail
    assert list(_backup(receiver).parent.iterdir()) == []

    monkeypatch.setattr(copy_module, "_copy_one", real_copy_one)
    pulled = await _pull(receiver)
    assert isinstance(pulled, FilesPulled)
    assert len(pulled.files) == len(FILES)


async def test_project_not_served_by_the_receiver_is_ignored(receiver):
    msg, emitter = incoming(REQUEST, project="snqxz", updateid=UPDATE_ID)
    await handle_pull_requested(msg, emitter, receiver=receiver)
    assert emitter.events == []


@pytest.mark.rabbit
async def test_file_pull_service_answers_pull_requests_through_the_broker(amqp_url, receiver, tmp_path):
    _write_version(receiver, FILES)
    config = parse_config(
        {
            "amqp_url": amqp_url,
            "broker": {"shared_user": "guest"},
            "projects": {
                "ssss": {"areas": {"hot_server": {"大陆": ["cn"]}},
                         "inventory": {"cn": {"servers": {"game": {"127.0.0.1": ["qq_1"]}}}}},
                "snqxz": {"areas": {"hot_server": {"大陆": ["cn"]}},
                          "inventory": {"cn": {"servers": {"game": {"127.0.0.1": ["qq_1"]}}}}},
            },
            "receivers": {"recv1": receiver.model_dump(mode="json")},
        },
        tmp_path / "config.yaml",
    )
    service = build_service(config, "recv1", processed_url=f"sqlite:///{tmp_path / 'processed.db'}")
    await service.start()
    try:
        async with Probe(amqp_url) as probe, AsyncPublisher(amqp_url) as publisher:
            await probe.bind(binding(FilesPulled), binding(PullFailed))
            ours = make_envelope(REQUEST, source="hotupdate/cmdb", updateid=UPDATE_ID, project="ssss", area="cn")
            missing = make_envelope(
                REQUEST.model_copy(update={"version": "1"}),
                source="hotupdate/cmdb", updateid="u-2", project="ssss", area="cn",
            )
            # another receiver's project: this service is not bound to it
            await publisher.publish(
                make_envelope(REQUEST, source="hotupdate/cmdb", updateid="u-3", project="snqxz", area="cn")
            )
            await publisher.publish(ours)
            await publisher.publish(missing)
            messages = await probe.wait_for(2)
            await asyncio.sleep(0.5)  # time enough for a wrong answer about snqxz to show up
            assert len(probe.messages) == 2
    finally:
        await service.stop()
    envelopes = {e.causationid: e for e in (Envelope.from_bytes(m.body) for m in messages)}
    assert set(envelopes) == {ours.id, missing.id}
    pulled = DEFAULT_REGISTRY.decode(envelopes[ours.id])
    assert isinstance(pulled, FilesPulled)
    assert {f.file_name for f in pulled.files} == set(FILES)
    assert envelopes[ours.id].source == "hotupdate/file_pull/recv1"
    failed = DEFAULT_REGISTRY.decode(envelopes[missing.id])
    assert isinstance(failed, PullFailed) and failed.reason == "version_missing"
    assert not (receiver.backup_root / "hot_server" / "snqxz").exists()


@pytest.mark.rabbit
async def test_pull_request_from_a_broker_user_that_is_not_the_cmdb_is_parked_and_nothing_is_copied(
        amqp_url, receiver, tmp_path):
    from bus.parking import ParkingQueues

    _write_version(receiver, FILES)
    # No shared user: only hotupdate.cmdb may publish pull.requested; the test publishes as guest
    config = parse_config(
        {"amqp_url": amqp_url, "projects": {"ssss": {"areas": {"hot_server": {"大陆": ["cn"]}},
                                                 "inventory": {"cn": {"servers": {"game": {"127.0.0.1": ["qq_1"]}}}}}},
         "receivers": {"recv1": receiver.model_dump(mode="json")}},
        tmp_path / "config.yaml",
    )
    service = build_service(config, "recv1")
    await service.start()
    try:
        async with AsyncPublisher(amqp_url) as pub:
            await pub.publish(make_envelope(REQUEST, source="hotupdate/cmdb", updateid=UPDATE_ID,
                                            project="ssss", area="cn"))
            for _ in range(100):
                if service.parked:
                    break
                await asyncio.sleep(0.05)
    finally:
        await service.stop()
    parked = await asyncio.to_thread(ParkingQueues(amqp_url).peek, "file_pull.recv1")
    assert len(parked) == 1
    assert parked[0].reason == ("identity: broker user 'guest' may not publish hotupdate.pull.requested.v1 for "
                                "project 'ssss' (allowed: hotupdate.cmdb)")
    assert not _backup(receiver).exists()
