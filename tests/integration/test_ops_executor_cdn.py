"""ops_executor hot_client on a real file system: staged, moved into place, md5-checked, purged."""

from __future__ import annotations

import hashlib
import sys
import uuid

from bus.contract.events import CdnDirFinished, UpdateCompleted, UpdateStarted
from consumers.ops_executor.executor import Executor
from consumers.ops_executor.state import StateStore
from tests.ops_world import OPS, PROJECT, World, hot_client_request
from tests.recording import RecordingEmitter

ROOT_URL = "res.ssss.chuangyunet.com"
FILES = {"a.txt": b"alpha v2\n", "ui/b.png": bytes(range(256)) * 40}
# Writes the files it was given to <target_dir>/.purged: proves the command ran, per dir, with {files} expanded.
PURGE = [sys.executable, "-c",
         "import pathlib, sys; pathlib.Path(sys.argv[1], '.purged').write_text('\\n'.join(sys.argv[2:]))",
         "{target_dir}", "{files}"]


def executor_for(world: World, **ops) -> Executor:
    config = world.config(**ops)
    return Executor(ops_manager=OPS, config=config.ops_managers[OPS], store=StateStore(world.state_url),
                    projects=config.projects)


def completed(emitter: RecordingEmitter) -> UpdateCompleted:
    done = emitter.events[-1]
    assert isinstance(done, UpdateCompleted), emitter.events
    return done


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


async def test_each_cdn_dir_gets_the_files_and_an_unwritable_one_alone_fails(tmp_path):
    world = World(tmp_path)
    origin = world.cdn_root / ROOT_URL
    (origin / "t1").mkdir(parents=True)
    (origin / "t1" / "keep.txt").write_text("not part of this update")
    (origin / "t1" / "a.txt").write_text("alpha v1")
    (origin / "r1").write_text("a regular file where a directory should be")  # root ignores chmod
    uid = str(uuid.uuid4())
    dirs = [(ROOT_URL, "t1"), (ROOT_URL, "test_r1"), (ROOT_URL, "s1"), (ROOT_URL, "r1")]
    env, event = hot_client_request(world, uid, world.push(uid, FILES), dirs)
    emitter = RecordingEmitter(env)

    await executor_for(world, purge_cmd={PROJECT: PURGE}).handle(env, event, emitter)

    for cdn_dir in ("t1", "test_r1", "s1"):
        for name, content in FILES.items():
            assert md5((origin / cdn_dir / name).read_bytes()) == md5(content)
        assert (origin / cdn_dir / ".purged").read_text().split("\n") == list(FILES)
    assert (origin / "t1" / "keep.txt").read_text() == "not part of this update"
    assert not [p for p in origin.iterdir() if ".hotupdate-" in p.name]  # no staging dir left behind
    assert isinstance(emitter.events[0], UpdateStarted)
    assert [(t.cdn_root_url, t.cdn_dir) for t in emitter.events[0].cdn_dirs] == dirs
    finished = {e.cdn_dir: e for e in emitter.events if isinstance(e, CdnDirFinished)}
    assert {d: f.status for d, f in finished.items()} == {"t1": True, "test_r1": True, "s1": True, "r1": False}
    assert finished["r1"].data.startswith("更新失败")
    done = completed(emitter)
    assert done.data == [{"cdn_root_url": ROOT_URL, "cdn_dir": d, "status": d != "r1"} for _, d in dirs]
    assert (done.final_result, done.ok_count, done.failed_count) == (False, 3, 1)
    assert f"{ROOT_URL}/r1" in done.final_data


async def test_all_cdn_dirs_updated_reports_all_done(tmp_path):
    world = World(tmp_path)
    uid = str(uuid.uuid4())
    env, event = hot_client_request(world, uid, world.push(uid, FILES), [(ROOT_URL, "t1"), (ROOT_URL, "s1")])
    emitter = RecordingEmitter(env)

    await executor_for(world).handle(env, event, emitter)

    done = completed(emitter)
    assert (done.final_result, done.final_data, done.ok_count) == (True, "全部完成", 2)


async def test_files_not_matching_their_md5_are_never_placed(tmp_path):
    world = World(tmp_path)
    uid = str(uuid.uuid4())
    files = world.push(uid, FILES)
    (world.incoming_root / PROJECT / "cn" / uid / "004200000" / "a.txt").write_bytes(b"tampered in transit")
    env, event = hot_client_request(world, uid, files, [(ROOT_URL, "t1")])
    emitter = RecordingEmitter(env)

    await executor_for(world).handle(env, event, emitter)

    (finished,) = [e for e in emitter.events if isinstance(e, CdnDirFinished)]
    assert finished.status is False and "a.txt(md5不符)" in finished.data
    assert not (world.cdn_root / ROOT_URL / "t1").exists()
    assert completed(emitter).final_result is False


async def test_failing_purge_command_marks_the_dir_failed(tmp_path):
    world = World(tmp_path)
    uid = str(uuid.uuid4())
    env, event = hot_client_request(world, uid, world.push(uid, FILES), [(ROOT_URL, "t1")])
    emitter = RecordingEmitter(env)

    await executor_for(world, purge_cmd={PROJECT: ["false", "{cdn_dir}"]}).handle(env, event, emitter)

    (finished,) = [e for e in emitter.events if isinstance(e, CdnDirFinished)]
    assert finished.status is False and "刷新CDN失败" in finished.data
    assert md5((world.cdn_root / ROOT_URL / "t1" / "a.txt").read_bytes()) == md5(FILES["a.txt"])


async def test_redelivered_hot_client_request_does_not_copy_again(tmp_path):
    world = World(tmp_path)
    uid = str(uuid.uuid4())
    env, event = hot_client_request(world, uid, world.push(uid, FILES), [(ROOT_URL, "t1"), (ROOT_URL, "s1")])
    first = RecordingEmitter(env)
    await executor_for(world).handle(env, event, first)
    placed = world.cdn_root / ROOT_URL / "t1" / "a.txt"
    inode = placed.stat().st_ino

    again = RecordingEmitter(env)
    await executor_for(world).handle(env, event, again)

    assert placed.stat().st_ino == inode
    assert sorted(e.id for e in again.envelopes) == sorted(e.id for e in first.envelopes)
    assert again.events[-1] == first.events[-1]


async def test_unfinished_update_whose_request_cannot_be_read_is_failed_not_left_running(tmp_path):
    world = World(tmp_path)
    world.allow_cdn([(ROOT_URL, "t1")])  # a project with some inventory (a contradiction rule wants one)
    store = StateStore(world.state_url)
    store.tables.claim(update_id="u-broken", project=PROJECT, area="cn", update_type="hot_client", version="1",
                request='{"not": "an envelope"}')

    tasks = await executor_for(world).resume_unfinished(RecordingEmitter)

    assert tasks == []
    record = store.tables.get("u-broken")
    assert record is not None and record.status == "failed" and record.final_data.startswith("无法恢复")


async def test_client_type_changes_nothing_the_executor_does(tmp_path):
    # events.md, `client_type`: the operator's label, carried and shown; the CDN dirs alone decide.
    outcomes = []
    for client_type in (0, 1):
        world = World(tmp_path / f"client_type_{client_type}")
        uid = str(uuid.uuid4())
        env, event = hot_client_request(world, uid, world.push(uid, FILES), [(ROOT_URL, "t1")])
        event = event.model_copy(update={"client_type": client_type})
        emitter = RecordingEmitter(env)
        await executor_for(world).handle(env, event, emitter)
        placed = {p.relative_to(world.cdn_root).as_posix(): p.read_bytes()
                  for p in sorted(world.cdn_root.rglob("*")) if p.is_file()}
        done = completed(emitter)
        outcomes.append((placed, done.data, done.final_data))
    assert outcomes[0] == outcomes[1]
    assert set(outcomes[0][0]) == {f"{ROOT_URL}/t1/{name}" for name in FILES}
