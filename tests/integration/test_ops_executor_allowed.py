"""The ops executor runs only what the configuration allows, whoever published the request.

Attacks played on a real broker against the executor service and real Erlang nodes: an
*update requested* published straight onto the bus (as the CMDB's user: in tests the shared
guest user) with an Erlang command that runs OS commands, an IP outside the inventory, a real
server addressed on another IP than its own, a group it is not in, a CDN dir not configured.
Each is parked with a reason naming the field and value, and nothing runs; the legitimate update
published next to them completes. The cookie never appears on any process's command line.
"""

from __future__ import annotations

import asyncio
import os
import stat
import uuid
from pathlib import Path

import pytest

from bus.contract.envelope import Envelope
from bus.contract.events import CdnTarget, FileEntry, IpFinished, UpdateCompleted, UpdateRequested, UpdateStarted
from bus.contract.registry import DEFAULT_REGISTRY
from bus.publisher import AsyncPublisher
from bus.topology import Topology, binding
from consumers.ops_executor.service import build_service
from demo.erlang import ErlangNodes, compile_module, process_alive
from tests.busprobe import Probe
from tests.ops_world import OPS, VERSION, World, envelope_of, hot_client_request, hot_server_request

pytestmark = [pytest.mark.rabbit, pytest.mark.erlang]

IP_A, IP_B, IP_X = "127.0.0.1", "127.0.0.2", "127.0.0.99"
PARK_REASON = "x-hotupdate-park-reason"


def server(world: World, nodes: ErlangNodes, ip: str, base: str) -> str:
    name = world.name(base)
    root = world.server_dir(ip, name)
    compile_module(world.module, 1, root / "ebin")
    nodes.start(name, root, root / "ebin")
    return name


def runs(world: World, ip: str, name: str) -> int:
    counter = world.server_dir(ip, name) / "runs"
    return len(counter.read_bytes()) if counter.exists() else 0


def forged(uid: str, files: list[FileEntry], **fields: object) -> Envelope:
    """An *update requested* built by hand, as an attacker would, without touching the world's inventory."""
    event = UpdateRequested.model_validate({
        "update_type": "hot_server", "version": VERSION, "ops_manager": OPS, "update_file_list": files,
        "requested_by": "mallory", **fields,
    })
    return envelope_of(event, uid)


async def completions(probe: Probe, count: int, timeout: float = 60) -> list[UpdateCompleted]:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        done = [e for m in probe.messages if isinstance(e := DEFAULT_REGISTRY.decode(Envelope.from_bytes(m.body)),
                                                          UpdateCompleted)]
        if len(done) >= count:
            return done
        assert asyncio.get_running_loop().time() < deadline, f"{len(done)} of {count} completions"
        await asyncio.sleep(0.1)


async def test_forbidden_requests_on_the_bus_are_parked_with_the_reason_and_nothing_runs(world, nodes, amqp_url):
    s1, s2 = server(world, nodes, IP_A, "qq_1"), server(world, nodes, IP_B, "qq_2")
    beam = compile_module(world.module, 2, world.root / "build_v2")
    legit_id = str(uuid.uuid4())
    cmds = [f"c:l({world.module})", f"{world.module}:bump()"]
    legit, _ = hot_server_request(world, legit_id, world.push(legit_id, {beam.name: beam.read_bytes()}),
                                  {"game": {IP_A: [s1], IP_B: [s2]}}, cmds)
    marker = world.root / "pwned"
    attacks = {  # what each forged request does wrong → the field and value its park reason must name
        "os-cmd": (dict(update_server_list={"game": {IP_A: [s1]}},
                        erlang_cmd_list=[f"c:l({world.module})", f'os:cmd("touch {marker}")']),
                   f"erlang_cmd_list[1]: 'os:cmd(\"touch {marker}\")'"),
        "ip": (dict(update_server_list={"game": {IP_X: [s1]}}, erlang_cmd_list=cmds),
               f"update_server_list[game][{IP_X}]: '{IP_X}'"),
        "server-on-another-ip": (dict(update_server_list={"game": {IP_A: [s2]}}, erlang_cmd_list=cmds),
                                 f"update_server_list[game][{IP_A}][0]: '{s2}'"),
        "group": (dict(update_server_list={"cross": {IP_B: [s2]}}, erlang_cmd_list=cmds),
                  "update_server_list[cross]: 'cross'"),
    }
    envelopes = {}
    for name, (fields, _) in attacks.items():
        uid = str(uuid.uuid4())
        files = world.push(uid, {beam.name: beam.read_bytes()})
        envelopes[name] = forged(uid, files, **fields)
    service = build_service(world.config(amqp_url), OPS)
    await service.start()
    try:
        async with Probe(amqp_url) as results, Probe(amqp_url) as parked, AsyncPublisher(amqp_url) as pub:
            await results.bind(binding(UpdateStarted, project="ssss"), binding(IpFinished, project="ssss"),
                               binding(UpdateCompleted, project="ssss"))
            await parked.watch(Topology().parking_queue(f"ops_executor.{OPS}"))
            for env in envelopes.values():
                await pub.publish(env)
            await pub.publish(legit)
            reasons = [str(m.headers[PARK_REASON]) for m in await parked.wait_for(len(attacks), timeout=60)]
            (done,) = await completions(results, 1)
            await asyncio.sleep(1.0)  # anything the forged requests might have started would show by now
    finally:
        await service.stop()

    for name, (_, named) in attacks.items():
        assert any(named in r for r in reasons), f"{name}: no park reason names {named}: {reasons}"
    assert not marker.exists()  # os:cmd never ran on a node
    assert done.final_result is True and done.ok_count == 2  # the legitimate update, published next to them
    assert runs(world, IP_A, s1) == 1 and runs(world, IP_B, s2) == 1  # its bump only: no forged one ran
    assert not (world.server_dir(IP_A, s2)).exists() and not world.server_dir(IP_X, s1).exists()
    started = {Envelope.from_bytes(m.body).updateid for m in results.messages}
    assert started == {legit_id}  # the executor recorded and reported nothing for the forged ones


async def test_a_cdn_dir_not_configured_is_parked_and_nothing_is_placed(world, amqp_url):
    root_url = "res.ssss.chuangyunet.com"
    uid = str(uuid.uuid4())
    legit, event = hot_client_request(world, uid, world.push(uid, {"a.txt": b"v2"}), [(root_url, "t1")])
    evil_id = str(uuid.uuid4())
    evil_event = UpdateRequested.model_validate({
        **event.model_dump(), "update_file_list": world.push(evil_id, {"a.txt": b"defaced"}),
        "data": [CdnTarget(cdn_root_url=root_url, cdn_dir="t1"), CdnTarget(cdn_root_url="evil.example.com",
                                                                            cdn_dir="t1")]})
    evil = envelope_of(evil_event, evil_id)
    service = build_service(world.config(amqp_url), OPS)
    await service.start()
    try:
        async with Probe(amqp_url) as results, Probe(amqp_url) as parked, AsyncPublisher(amqp_url) as pub:
            await results.bind(binding(UpdateCompleted, project="ssss"))
            await parked.watch(Topology().parking_queue(f"ops_executor.{OPS}"))
            await pub.publish(evil)
            await pub.publish(legit)
            (refused,) = await parked.wait_for(1, timeout=60)
            (done,) = await completions(results, 1)
    finally:
        await service.stop()

    assert "data[1]: 'evil.example.com/t1' is not a CDN dir of the inventory" in str(refused.headers[PARK_REASON])
    assert done.final_result is True
    assert (world.cdn_root / root_url / "t1" / "a.txt").read_bytes() == b"v2"  # the legit one, not the defaced
    assert not (world.cdn_root / "evil.example.com").exists()


def _cmdlines() -> dict[int, bytes]:
    out = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                out[int(proc.name)] = (proc / "cmdline").read_bytes()
            except OSError:
                continue
    return out


async def test_the_cookie_is_never_on_a_command_line_during_a_real_update(world, nodes, amqp_url):
    s1 = server(world, nodes, IP_A, "qq_1")
    uid = str(uuid.uuid4())
    beam = compile_module(world.module, 2, world.root / "build_v2")
    env, _ = hot_server_request(world, uid, world.push(uid, {beam.name: beam.read_bytes()}), {"game": {IP_A: [s1]}},
                                [f"c:l({world.module})", "timer:sleep(1500)", f"{world.module}:bump()"])
    cookie = world.cookie.encode()
    seen_erl_call: dict[int, bytes] = {}
    modes: set[tuple[int, int]] = set()  # (HOME's mode, its .erlang.cookie's mode) of each erl_call
    leaked: list[bytes] = []
    service = build_service(world.config(amqp_url), OPS)
    await service.start()
    try:
        async with Probe(amqp_url) as results, AsyncPublisher(amqp_url) as pub:
            await results.bind(binding(UpdateCompleted, project="ssss"))
            await pub.publish(env)
            deadline = asyncio.get_running_loop().time() + 60
            while not results.messages and asyncio.get_running_loop().time() < deadline:
                for pid, cmdline in _cmdlines().items():
                    if cookie in cmdline:
                        leaked.append(cmdline)
                    args = cmdline.split(b"\0")
                    if args[0].endswith(b"erl_call") and any(s1.encode() in a for a in args) \
                            and process_alive(pid) and pid not in seen_erl_call:
                        try:
                            seen_erl_call[pid] = Path(f"/proc/{pid}/environ").read_bytes()
                            home = Path(os.fsdecode(_home_of(seen_erl_call[pid]) or b"/nonexistent"))
                            modes.add((stat.S_IMODE(home.stat().st_mode),
                                       stat.S_IMODE((home / ".erlang.cookie").stat().st_mode)))
                        except OSError:
                            continue
                await asyncio.sleep(0.05)
            (done,) = await completions(results, 1)
    finally:
        await service.stop()

    assert done.final_result is True
    assert seen_erl_call, "no erl_call was seen running: the scan proved nothing"
    assert leaked == []  # neither erl_call's argv nor the nodes' (nor anyone's) held the cookie
    assert all(cookie not in (Path(f"/proc/{pid}/cmdline").read_bytes() if Path(f"/proc/{pid}").exists() else b"")
               for pid in nodes.pids.values())
    (home,) = {_home_of(environ) for environ in seen_erl_call.values()}  # one private HOME for the project
    assert home is not None and Path(os.fsdecode(home)) != Path.home()
    assert modes == {(0o700, 0o400)}  # only this user may enter it or read the cookie
    assert not Path(os.fsdecode(home)).exists()  # removed when the service stopped


def _home_of(environ: bytes) -> bytes | None:
    return dict(v.split(b"=", 1) for v in environ.split(b"\0") if b"=" in v).get(b"HOME")
