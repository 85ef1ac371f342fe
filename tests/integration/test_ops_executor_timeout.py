"""A timeout stops the work it reports as stopped: an apply cut off by its timeout copies nothing more,
and a CDN dir whose update is cancelled gets nothing afterwards."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from bus.contract.events import IpFinished, UpdateCompleted
from consumers.ops_executor.executor import Executor
from consumers.ops_executor.hot_client import CdnJob, CdnUpdater
from consumers.ops_executor.runner import StagedFile
from consumers.ops_executor.state import StateStore
from domain.layout import incoming_dir
from tests.ops_world import AREA, OPS, PROJECT, VERSION, World, hot_server_request
from tests.recording import RecordingEmitter


def landed(world: World, ip: str, server: str) -> tuple[int, int]:
    """Files in the server's ebin, and temporary (half-written) ones."""
    names = [p.name for p in (world.server_dir(ip, server) / "ebin").iterdir()]
    return sum(not n.startswith(".") for n in names), sum("hotupdate-tmp" in n for n in names)


async def test_servers_reported_timed_out_receive_no_more_files_afterwards(tmp_path):
    world = World(tmp_path)
    uid = str(uuid.uuid4())
    servers = {"127.0.0.1": ["qq_1", "qq_2"], "127.0.0.2": ["qq_3"]}
    for ip, names in servers.items():
        for name in names:
            (world.server_dir(ip, name) / "ebin").mkdir(parents=True)
    files = world.push(uid, {f"m{i}.beam": b"x" * 1024 for i in range(2000)})
    env, event = hot_server_request(world, uid, files, {"game": servers}, [])
    config = world.config(command_timeout_seconds=0.2)
    executor = Executor(ops_manager=OPS, config=config.ops_managers[OPS], store=StateStore(world.state_url),
                        projects=config.projects)
    emitter = RecordingEmitter(env)

    await executor.handle(env, event, emitter)

    reported = {s: r for e in emitter.events if isinstance(e, IpFinished) for s, r in e.update_data.items()}
    timed_out = "更新失败,不执行erl命令: timeout after 0.2s"
    assert {s: r.data for s, r in reported.items()} == dict.fromkeys(reported, timed_out)
    assert len(reported) == 3
    done = emitter.events[-1]
    assert isinstance(done, UpdateCompleted) and done.failed_count == 3
    after = {(ip, s): landed(world, ip, s) for ip, names in servers.items() for s in names}
    assert all(n < len(files) and tmp == 0 for n, tmp in after.values())
    await asyncio.sleep(1.5)
    assert {(ip, s): landed(world, ip, s) for ip, names in servers.items() for s in names} == after


async def test_a_cancelled_cdn_dir_has_stopped_and_got_none_of_the_files(tmp_path):
    world = World(tmp_path)
    uid = str(uuid.uuid4())
    names = {f"m{i}.png": b"x" * 1024 for i in range(3000)}
    entries = world.push(uid, names)
    staged_dir = incoming_dir(world.incoming_root, PROJECT, AREA, uid, VERSION)
    job = CdnJob(project=PROJECT, area=AREA, update_id=uid, version=VERSION, entries=tuple(entries),
                 files=tuple(StagedFile(staged_dir / n, n) for n in names))
    updater = CdnUpdater(world.cdn_root, purge_cmd=None, semaphore=asyncio.Semaphore(1), command_timeout=60)
    origin = world.cdn_root / "res.x.com"
    task = asyncio.create_task(updater.run_dir(job, "res.x.com", "t1"))
    while not any(origin.glob(".t1.hotupdate-*/*")):  # staging has begun
        await asyncio.sleep(0.01)

    task.cancel()  # what stopping the executor does to a running update
    with pytest.raises(asyncio.CancelledError):
        await task

    await asyncio.sleep(1.0)
    assert not (origin / "t1").exists()  # no file of the update was placed, then or later
    assert list(origin.iterdir()) == []  # and the staging directory is gone
