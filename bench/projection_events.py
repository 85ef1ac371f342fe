"""A realistic stream of projection events for the benchmarks, generated fast.

One template hot_server update (pull, push, the update request over ``ips`` IPs × ``servers``
game servers, *update started*, one *IP finished* per IP, one of them with a failed server,
*update completed*) and one hot_client update (4 CDN dirs) are built once through the real
event models; every further update is a copy whose ids (update id, event ids, correlation and
causation ids: all UUIDs of the same length) are substituted in the canonical JSON bytes, so a
copy is canonical too and costs no validation to make. Updates are interleaved the way a busy
system sends them: ``concurrent`` updates in flight at once, their events in causal order
within each update.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

from bus.contract.envelope import Envelope
from bus.contract.events import (
    CdnDirFinished,
    CdnTarget,
    Event,
    FileEntry,
    FilesPulled,
    FilesPushed,
    IpFinished,
    PullRequested,
    PushRequested,
    RsyncTargetRef,
    RsyncTargetResult,
    ServerResult,
    UpdateCompleted,
    UpdateRequested,
    UpdateStarted,
)
from bus.contract.registry import DEFAULT_REGISTRY, make_envelope
from bus.handling import child_envelope

T0 = datetime(2026, 11, 24, 6, 0, 0, tzinfo=UTC)
FILES = [
    FileEntry(file_name="ebin/role_server.beam", file_md5="abe347d3fdff45f1078102c4637852a5", size=18432),
    FileEntry(file_name="config/skill.config", file_md5="5724c05c650550ac8034129ad7a4d915", size=2210),
]
TARGET = RsyncTargetRef(name="ssss_cn", ip="127.0.0.1", port=10873, module="cmdb_hot_server", user="cmdb_user")
OK = ServerResult(data="2 files applied", status=True)
ERL_OK = ServerResult(data="c:l(role_server). -> {module,role_server}", status=True)
FAILED = ServerResult(data="更新失败,不执行erl命令", status=False)
_UUID = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _at(env: Envelope, seconds: float) -> Envelope:
    return env.model_copy(update={"time": T0 + timedelta(seconds=seconds)})


def hot_server_template(ips: int, servers: int, updateid: str = "00000000-0000-4000-8000-000000000000",
                        project: str = "ssss", area: str = "cn") -> list[Envelope]:
    hosts = {f"10.{i // 250}.{i % 250}.1": [f"s{i}_{j}" for j in range(servers)] for i in range(ips)}
    pull = _at(make_envelope(
        PullRequested(update_type="hot_server", version="004200000", area_name="大陆", requested_by="alice"),
        source="hotupdate/cmdb", updateid=updateid, project=project, area=area, sequence=1), 0)
    pulled = _at(child_envelope(pull, FilesPulled(
        update_type="hot_server", version="004200000", source_dir=f"/data/version_update/server/{project}/{area}",
        backup_dir=f"/data/hot_backup/hot_server/{project}/{area}", files=FILES, total_bytes=20642,
    ), source="hotupdate/file_pull/recv1", offset=1), 1)
    push = _at(make_envelope(
        PushRequested(update_type="hot_server", version="004200000", files=FILES, targets=[TARGET],
                      requested_by="bob"),
        source="hotupdate/cmdb", updateid=updateid, project=project, area=area, sequence=3, causationid=pulled.id), 2)
    pushed = _at(child_envelope(push, FilesPushed(
        update_type="hot_server", version="004200000",
        targets=[RsyncTargetResult(**TARGET.model_dump(), ok=True, bytes=20642, seconds=0.4)],
    ), source="hotupdate/file_push/recv1", offset=1), 3)
    request = _at(make_envelope(
        UpdateRequested(update_type="hot_server", version="004200000", ops_manager="ops1", update_file_list=FILES,
                        requested_by="bob", update_server_list={"game": hosts},
                        erlang_cmd_list=["c:l(role_server)."]),
        source="hotupdate/cmdb", updateid=updateid, project=project, area=area, sequence=5, causationid=pushed.id), 4)
    started = _at(child_envelope(request, UpdateStarted(
        update_type="hot_server", version="004200000", ops_manager="ops1", ips=list(hosts)),
        source="hotupdate/ops_executor/ops1", offset=1), 5)
    envs = [pull, pulled, push, pushed, request, started]
    failed = 0
    for n, (ip, names) in enumerate(hosts.items()):
        results = {s: (FAILED if n == 0 and k == 0 else OK) for k, s in enumerate(names)}
        failed += sum(1 for r in results.values() if not r.status)
        erl = {s: (FAILED if not r.status else ERL_OK) for s, r in results.items()}
        event = IpFinished(version="004200000", ip=ip, group="game", update_data=results,
                           erl_data=erl)
        envs.append(_at(child_envelope(request, event, source="hotupdate/ops_executor/ops1", offset=2 + n, key=ip),
                        6 + n * 0.1))
    total = ips * servers
    envs.append(_at(child_envelope(request, UpdateCompleted(
        update_type="hot_server", version="004200000", final_result=failed == 0,
        final_data=f"{failed} of {total} servers failed", ok_count=total - failed, failed_count=failed,
    ), source="hotupdate/ops_executor/ops1", offset=2 + ips), 7 + ips * 0.1))
    return envs


def hot_client_template(updateid: str = "00000000-0000-4000-8000-0000000000c1") -> list[Envelope]:
    cdn = [CdnTarget(cdn_root_url="res.ssss.chuangyunet.com", cdn_dir=d) for d in ("t1", "t2", "r1", "r2")]
    request = _at(make_envelope(
        UpdateRequested(update_type="hot_client", version="003100000", ops_manager="ops1", update_file_list=FILES,
                        requested_by="carol", client_type=0, data=cdn),
        source="hotupdate/cmdb", updateid=updateid, project="ssss", area="cn", sequence=5), 0)
    started = _at(child_envelope(request, UpdateStarted(
        update_type="hot_client", version="003100000", ops_manager="ops1", cdn_dirs=cdn,
    ), source="hotupdate/ops_executor/ops1", offset=1), 1)
    envs = [request, started]
    for n, target in enumerate(cdn):
        envs.append(_at(child_envelope(request, CdnDirFinished(
            version="003100000", cdn_root_url=target.cdn_root_url, cdn_dir=target.cdn_dir, status=n != 2,
            data="synced" if n != 2 else "rsync: connection refused"),
            source="hotupdate/ops_executor/ops1", offset=2 + n, key=target.cdn_dir), 2 + n))
    envs.append(_at(child_envelope(request, UpdateCompleted(
        update_type="hot_client", version="003100000", final_result=False, final_data="1 of 4 dirs failed",
        ok_count=3, failed_count=1,
    ), source="hotupdate/ops_executor/ops1", offset=6), 7))
    return envs


class Stamper:
    """Copies of a template update with fresh UUIDs, as canonical envelope bytes."""

    def __init__(self, template: list[Envelope]) -> None:
        self.bodies = [e.to_bytes() for e in template]
        found: dict[bytes, None] = {}
        for body in self.bodies:
            for m in _UUID.finditer(body):
                found[m.group(0)] = None
        self.uuids = list(found)
        self._pattern = re.compile(b"|".join(re.escape(u) for u in self.uuids))

    def fresh(self, n: int) -> dict[bytes, bytes]:
        """Copy ``n``'s UUID for each of the template's (deterministic)."""
        seed = f"copy-{n}".encode()
        return {u: str(uuid.UUID(bytes=hashlib.md5(seed + u).digest(), version=4)).encode() for u in self.uuids}

    def copy(self, n: int, fresh: dict[bytes, bytes] | None = None) -> list[bytes]:
        fresh = fresh or self.fresh(n)
        return [self._pattern.sub(lambda m: fresh[m.group(0)], body) for body in self.bodies]


def stream(updates: int, *, ips: int = 20, servers: int = 5, client_every: int = 5, concurrent: int = 20,
           start: int = 0) -> Iterator[bytes]:
    """Envelope bytes of ``updates`` updates (every ``client_every``-th a hot_client one), ``concurrent``
    of them interleaved at a time, each update's events in causal order."""
    server, client = Stamper(hot_server_template(ips, servers)), Stamper(hot_client_template())
    for first in range(start, start + updates, concurrent):
        group = [(client if n % client_every == client_every - 1 else server).copy(n)
                 for n in range(first, min(first + concurrent, start + updates))]
        longest = max(len(g) for g in group)
        for k in range(longest):
            for g in group:
                if k < len(g):
                    yield g[k]


def decode(body: bytes) -> tuple[Envelope, Event]:
    """What the consumer runtime does with a body before the projection's handler sees it."""
    env = Envelope.from_bytes(body)
    return env, DEFAULT_REGISTRY.decode(env)


def events_per_update(ips: int = 20, client_every: int = 5) -> float:
    server, client = 7 + ips, 7
    return (server * (client_every - 1) + client) / client_every
