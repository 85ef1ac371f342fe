"""Test helpers for the CMDB: a configuration in the seed's terms, operator tokens, the events
the receivers and the executor would send, and a TCP proxy that plays "broker down"."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from sqlalchemy import select

from bus.contract.envelope import Envelope
from bus.contract.events import (
    BatchFinished,
    BatchFinishedV1,
    CdnDirFinished,
    Event,
    FileEntry,
    FilesPulled,
    FilesPushed,
    IpFinished,
    PullFailed,
    PushFailed,
    RsyncTargetResult,
    ServerResult,
    UpdateCompleted,
    UpdateStarted,
)
from bus.contract.registry import DEFAULT_REGISTRY
from bus.handling import Incoming, child_envelope
from domain.allowed import DEFAULT_ERLANG_CMD_ALLOWED
from domain.config import HotupdateConfig, parse_config
from producers.cmdb.auth import hash_token
from producers.cmdb.database import CmdbDatabase
from producers.cmdb.models import HotUpdate, OutboxMessage

TOKENS = {"alice": "alice-secret-token", "bob": "bob-secret-token"}
FILES = [
    FileEntry(file_name="ebin/role_server.beam", file_md5="abe347d3fdff45f1078102c4637852a5", size=18432),
    FileEntry(file_name="config/skill.config", file_md5="5724c05c650550ac8034129ad7a4d915", size=2210),
    FileEntry(file_name="ebin/mail_server.beam", file_md5="0123456789abcdef0123456789abcdef", size=999),
]


def config_dict() -> dict[str, object]:
    """The seed's projects (ssss; snqxz with 大陆/台湾/越南), loopback addresses, two operators.

    The test broker logs every component in as guest: shared-user mode (tests of who may send what
    configure per-component users themselves).
    """
    return {
        # every test component logs in as guest: the broker cannot tell them apart (bus/identity.py)
        "broker": {"shared_user": "guest"},
        "projects": {
            "ssss": {
                "display_name": "三生三世",
                "areas": {"hot_server": {"大陆": ["cn"]}, "hot_client": {"大陆": ["cn"]}},
                "rsync_targets": [
                    {"name": "ssss_cn", "area": "大陆", "ip": "127.0.0.1", "port": 10873,
                     "module": "cmdb_hot_server", "user": "cmdb_user", "pass_file": "/etc/ssss.password",
                     "ops_manager": "ops1"},
                ],
                "inventory": {
                    "cn": {
                        "servers": {
                            "game": {"127.0.0.11": ["qq_1", "qq_2"], "127.0.0.12": ["qq_3", "qq_4"]},
                            "cross": {"127.0.0.21": ["cross_1"]},
                            "cross_center": {"127.0.0.31": ["center_1"]},
                        },
                        "cdn": [
                            {"cdn_root_url": "res.ssss.chuangyunet.com", "cdn_dir": "t1"},
                            {"cdn_root_url": "res.ssss.chuangyunet.com", "cdn_dir": "s1"},
                        ],
                    }
                },
                "erlang_cmd_list": ["user_default:reload()."],
                # hot loading (the default forms) and this project's own reload function
                "erlang_cmd_allowed": [*DEFAULT_ERLANG_CMD_ALLOWED, r"user_default:reload\(\)"],
            },
            "snqxz": {
                "areas": {
                    "hot_server": {"大陆": ["cn", "cn_new"], "台湾": ["tw"], "越南": ["vn"]},
                    "hot_client": {"大陆": ["cn"], "台湾": ["tw"], "越南": ["vn"]},
                },
                "rsync_targets": [
                    {"name": "snqxz_tw", "area": "台湾", "ip": "127.0.0.2", "port": 10874,
                     "module": "cmdb_hot_server", "user": "cmdb_user", "pass_file": "/etc/snqxz_taiwan.password",
                     "ops_manager": "ops2"},
                ],
                # placeholders of the seed's shape: every area code has servers and CDN dirs
                "inventory": {
                    code: {"servers": {"game": {ip: [f"{code}_1"]}},
                           "cdn": [{"cdn_root_url": "res.snqxz.chuangyunet.com", "cdn_dir": f"{code}_r1"}]}
                    for code, ip in (("cn", "127.0.0.42"), ("cn_new", "127.0.0.43"), ("tw", "127.0.0.41"),
                                     ("vn", "127.0.0.44"))
                },
            },
        },
        "ops_managers": {
            "ops1": {"projects": ["ssss"], "incoming_root": "/tmp/in1", "cdn_origin_root": "/tmp/cdn1"},
            "ops2": {"projects": ["snqxz"], "incoming_root": "/tmp/in2", "cdn_origin_root": "/tmp/cdn2"},
        },
        "cmdb": {"operators": [{"name": n, "token_sha256": hash_token(t)} for n, t in TOKENS.items()]},
    }


def make_config(tmp_path: Path) -> HotupdateConfig:
    return parse_config(config_dict(), tmp_path / "config.yaml")


def auth(operator: str = "alice") -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[operator]}"}


# --- reading the database ------------------------------------------------------------


def outbox(database: CmdbDatabase) -> list[Envelope]:
    """Every queued envelope, in publishing order."""
    with database.transaction() as session:
        rows = session.scalars(select(OutboxMessage).order_by(OutboxMessage.id)).all()
        return [Envelope.from_bytes(r.envelope) for r in rows]


def row(database: CmdbDatabase, update_id: str) -> HotUpdate:
    with database.transaction() as session:
        found = session.get(HotUpdate, update_id)
        assert found is not None
        return found


# --- what the other components would answer -------------------------------------------

RECEIVER = "hotupdate/file_pull/recv1"


def answer(parent: Envelope, event: Event, *, offset: int = 1, key: str = "", source: str = RECEIVER) -> Envelope:
    return child_envelope(parent, event, source=source, offset=offset, key=key)


def incoming(envelope: Envelope, *, redelivered: bool = False) -> Incoming[Any]:
    """As the consumer hands it to a handler: decoded and upcast to the newest model."""
    return Incoming(envelope, DEFAULT_REGISTRY.decode(envelope), redelivered=redelivered)


def files_pulled(pull: Envelope, files: list[FileEntry] | None = None) -> Envelope:
    data = pull.data
    event = FilesPulled(
        update_type=data["update_type"],
        version=data["version"],
        source_dir=f"/data/version_update/server/{pull.project}/{pull.area}/{data['version']}/reloadfiles",
        backup_dir=f"/data/hot_backup/{data['update_type']}/{pull.project}/{pull.area}/{pull.updateid}",
        files=files or FILES,
        total_bytes=sum(f.size for f in files or FILES),
    )
    return answer(pull, event)


def pull_failed(pull: Envelope) -> Envelope:
    event = PullFailed(
        update_type=pull.data["update_type"], version=pull.data["version"], reason="version_missing",
        detail="/data/version_update/server/ssss/cn/004200001/reloadfiles does not exist",
    )
    return answer(pull, event)


def files_pushed(push: Envelope) -> Envelope:
    targets = [RsyncTargetResult(**t, ok=True, bytes=100, seconds=0.1) for t in push.data["targets"]]
    event = FilesPushed(update_type=push.data["update_type"], version=push.data["version"], targets=targets)
    return answer(push, event, source="hotupdate/file_push/recv1")


def push_failed(push: Envelope) -> Envelope:
    targets = [RsyncTargetResult(**t, ok=False, error="@ERROR: auth failed on module cmdb_hot_server")
               for t in push.data["targets"]]
    event = PushFailed(
        update_type=push.data["update_type"], version=push.data["version"], targets=targets,
        failed_targets=[t.name for t in targets], reason=f"{len(targets)} of {len(targets)} rsync targets failed",
    )
    return answer(push, event, source="hotupdate/file_push/recv1")


EXECUTOR = "hotupdate/ops_executor/ops1"


def update_started(request: Envelope) -> Envelope:
    event = UpdateStarted(update_type=request.data["update_type"], version=request.data["version"],
                          ops_manager=request.data["ops_manager"])
    return answer(request, event, source=EXECUTOR)


def ip_finished(request: Envelope, ip: str, ok: bool = True, offset: int = 2) -> Envelope:
    group, servers = next((g, ips[ip]) for g, ips in request.data["update_server_list"].items() if ip in ips)
    result = ServerResult(data="ok" if ok else "更新失败,不执行erl命令", status=ok)
    event = IpFinished(version=request.data["version"], ip=ip, group=group,
                       update_data={s: result for s in servers}, erl_data={s: result for s in servers})
    return answer(request, event, offset=offset, key=ip, source=EXECUTOR)


def ip_finished_servers(request: Envelope, ip: str, ok: dict[str, bool], offset: int = 2) -> Envelope:
    """*IP finished* with a result per server: ``ok`` says which of the IP's servers succeeded."""
    group, servers = next((g, ips[ip]) for g, ips in request.data["update_server_list"].items() if ip in ips)
    update = {s: ServerResult(data="ok" if ok[s] else "更新失败,不执行erl命令", status=ok[s]) for s in servers}
    erl = {s: ServerResult(data="ok" if ok[s] else "更新失败,不执行erl命令", status=ok[s]) for s in servers}
    event = IpFinished(version=request.data["version"], ip=ip, group=group, update_data=update, erl_data=erl)
    return answer(request, event, offset=offset, key=ip, source=EXECUTOR)


def batch_finished(
    request: Envelope, batch: int, batches: int, next_: str, ips: list[str], failed: int = 0, offset: int = 20,
    model: type[BatchFinished | BatchFinishedV1] = BatchFinished,
) -> Envelope:
    event = model.model_validate({
        "batch": batch, "batches": batches, "ips": ips, "ok_count": len(ips) - failed, "failed_count": failed,
        "next": next_,
    })
    return answer(request, event, offset=offset + batch, key=str(batch), source=EXECUTOR)


def cdn_dir_finished(request: Envelope, cdn_dir: str, ok: bool = True, offset: int = 2) -> Envelope:
    entry = next(d for d in request.data["data"] if d["cdn_dir"] == cdn_dir)
    event = CdnDirFinished(version=request.data["version"], status=ok, **entry)
    return answer(request, event, offset=offset, key=cdn_dir, source=EXECUTOR)


def update_completed(
    request: Envelope, ok: bool = True, offset: int = 9, outcome: str | None = None, not_run: list[str] | None = None
) -> Envelope:
    event = UpdateCompleted.model_validate({
        "update_type": request.data["update_type"], "version": request.data["version"], "final_result": ok,
        "final_data": "全部完成" if ok else "部分失败", "ok_count": 4 if ok else 3, "failed_count": 0 if ok else 1,
        "outcome": outcome, "not_run": not_run or [],
    })
    return answer(request, event, offset=offset, source=EXECUTOR)


# --- a broker that can be "down" -----------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def via_port(amqp_url: str, port: int) -> str:
    """``amqp_url`` with its host and port replaced by 127.0.0.1:``port`` (where a TcpProxy listens)."""
    parts = urlsplit(amqp_url)
    creds = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    return urlunsplit((parts.scheme, f"{creds}127.0.0.1:{port}", parts.path, parts.query, ""))


class TcpProxy:
    """Forwards a loopback port to the real broker; while stopped, the port refuses connections."""

    def __init__(self, target_url: str, port: int) -> None:
        parts = urlsplit(target_url)
        self.target = (parts.hostname or "127.0.0.1", parts.port or 5672)
        self.port = port
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def stop(self) -> None:
        """Stop listening and cut every open connection, as a broker going away does."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers.update({writer, up_writer})
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(src, dst))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while chunk := await src.read(65536):
                dst.write(chunk)
                await dst.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            with contextlib.suppress(Exception):
                dst.close()
            self._writers.discard(dst)
