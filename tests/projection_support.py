"""Hand-built event sequences for the projection tests: a hot_server and a hot_client update."""

from __future__ import annotations

from datetime import timedelta

from bench.projection_events import ERL_OK, FAILED, FILES, OK, T0, TARGET  # one sample data set
from bus.contract.envelope import Envelope
from bus.contract.events import (
    CdnDirFinished,
    CdnTarget,
    Event,
    FilesPulled,
    FilesPushed,
    IpFinished,
    PullRequested,
    PushRequested,
    RsyncTargetResult,
    ServerResult,
    UpdateCompleted,
    UpdateRequested,
    UpdateStarted,
)
from bus.contract.registry import DEFAULT_REGISTRY, make_envelope
from bus.handling import child_envelope
from domain.db import make_engine, upgrade

SERVERS = {
    "game": {"127.0.0.11": ["qq_1", "qq_2"], "127.0.0.12": ["qq_3", "qq_4"]},
    "cross": {"127.0.0.21": ["cross_1", "cross_2"]},
    "cross_center": {"127.0.0.31": ["center_1"]},
}

Item = tuple[Envelope, Event]


def at(env: Envelope, minutes: float) -> Envelope:
    """The envelope with its time set ``minutes`` after T0 (a deterministic clock for the tests)."""
    return env.model_copy(update={"time": T0 + timedelta(minutes=minutes)})


def item(env: Envelope) -> Item:
    return env, DEFAULT_REGISTRY.decode(env)


def ip_finished(parent: Envelope, ip: str, group: str, servers: dict[str, bool], *, offset: int,
                minutes: float, note: str = "") -> Envelope:
    update = {s: (OK if ok else FAILED) for s, ok in servers.items()}
    erl = {s: (ERL_OK if ok else FAILED) for s, ok in servers.items()}
    if note:
        update = {s: ServerResult(data=note, status=r.status) for s, r in update.items()}
    event = IpFinished(version="004200000", ip=ip, group=group, update_data=update, erl_data=erl)  # type: ignore[arg-type]
    return at(child_envelope(parent, event, source="hotupdate/ops_executor/ops1", offset=offset, key=ip), minutes)


def hot_server_flow(updateid: str = "350cf0ef-c12e-4bcc-d0df-369a09a4a357", project: str = "ssss",
                    area: str = "cn", failing: tuple[str, ...] = ("qq_1",), complete: bool = True) -> list[Item]:
    """A whole hot_server update in causal order: pull, push, update on 4 IPs (7 servers), completion."""
    pull = at(make_envelope(
        PullRequested(update_type="hot_server", version="004200000", area_name="大陆", requested_by="alice"),
        source="hotupdate/cmdb", updateid=updateid, project=project, area=area, sequence=1,
    ), 0)
    pulled = at(child_envelope(pull, FilesPulled(
        update_type="hot_server", version="004200000",
        source_dir=f"/data/version_update/server/{project}/{area}/004200000/reloadfiles",
        backup_dir=f"/data/hot_backup/hot_server/{project}/{area}/{updateid}/004200000",
        files=FILES, total_bytes=20642,
    ), source="hotupdate/file_pull/recv1", offset=1), 1)
    push = at(make_envelope(
        PushRequested(update_type="hot_server", version="004200000", files=FILES, targets=[TARGET],
                      requested_by="bob"),
        source="hotupdate/cmdb", updateid=updateid, project=project, area=area, sequence=3,
        causationid=pulled.id,
    ), 2)
    pushed = at(child_envelope(push, FilesPushed(
        update_type="hot_server", version="004200000",
        targets=[RsyncTargetResult(**TARGET.model_dump(), ok=True, bytes=20642, seconds=0.4)],
    ), source="hotupdate/file_push/recv1", offset=1), 3)
    request = at(make_envelope(
        UpdateRequested(update_type="hot_server", version="004200000", ops_manager="ops1", update_file_list=FILES,
                        requested_by="bob", update_server_list=SERVERS,  # type: ignore[arg-type]
                        erlang_cmd_list=["c:l(role_server)."]),
        source="hotupdate/cmdb", updateid=updateid, project=project, area=area, sequence=5, causationid=pushed.id,
    ), 4)
    started = at(child_envelope(request, UpdateStarted(
        update_type="hot_server", version="004200000", ops_manager="ops1",
        ips=["127.0.0.11", "127.0.0.12", "127.0.0.21", "127.0.0.31"],
    ), source="hotupdate/ops_executor/ops1", offset=1), 5)
    envs = [pull, pulled, push, pushed, request, started]
    offset = 2
    for group, hosts in SERVERS.items():
        for ip, servers in hosts.items():
            envs.append(ip_finished(request, ip, group, {s: s not in failing for s in servers},
                                    offset=offset, minutes=4 + offset))
            offset += 1
    if complete:
        failed = len(failing)
        envs.append(at(child_envelope(request, UpdateCompleted(
            update_type="hot_server", version="004200000", final_result=failed == 0,
            final_data="全部完成" if not failed else f"{failed} of 7 servers failed", ok_count=7 - failed,
            failed_count=failed,
        ), source="hotupdate/ops_executor/ops1", offset=offset), 4 + offset))
    return [item(e) for e in envs]


def hot_client_flow(updateid: str = "c1b2c3d4-0000-4000-8000-000000000001") -> list[Item]:
    """A hot_client update on 2 CDN dirs; t1 succeeds, r1 fails, and the summary agrees."""
    cdn = [CdnTarget(cdn_root_url="res.ssss.chuangyunet.com", cdn_dir=d) for d in ("t1", "r1")]
    request = at(make_envelope(
        UpdateRequested(update_type="hot_client", version="003100000", ops_manager="ops1", update_file_list=FILES,
                        requested_by="carol", client_type=0, data=cdn),
        source="hotupdate/cmdb", updateid=updateid, project="ssss", area="cn", sequence=5,
    ), 0)
    started = at(child_envelope(request, UpdateStarted(
        update_type="hot_client", version="003100000", ops_manager="ops1", cdn_dirs=cdn,
    ), source="hotupdate/ops_executor/ops1", offset=1), 1)
    t1 = at(child_envelope(request, CdnDirFinished(
        version="003100000", cdn_root_url="res.ssss.chuangyunet.com", cdn_dir="t1", status=True, data="synced",
    ), source="hotupdate/ops_executor/ops1", offset=2, key="t1"), 2)
    r1 = at(child_envelope(request, CdnDirFinished(
        version="003100000", cdn_root_url="res.ssss.chuangyunet.com", cdn_dir="r1", status=False,
        data="rsync: connection refused",
    ), source="hotupdate/ops_executor/ops1", offset=3, key="r1"), 3)
    done = at(child_envelope(request, UpdateCompleted(
        update_type="hot_client", version="003100000", final_result=False, final_data="1 of 2 dirs failed",
        data=[{"cdn_root_url": "res.ssss.chuangyunet.com", "cdn_dir": "t1", "status": True},
              {"cdn_root_url": "res.ssss.chuangyunet.com", "cdn_dir": "r1", "status": False}],
        ok_count=1, failed_count=1,
    ), source="hotupdate/ops_executor/ops1", offset=4), 4)
    return [item(e) for e in (request, started, t1, r1, done)]


def migrated_engine(url: str):
    upgrade(url, "projection")
    return make_engine(url)


class LiveServer:
    """An ASGI app served by uvicorn on a free loopback port, in a thread, for browser and streaming tests."""

    def __init__(self, app, port: int | None = None, **uvicorn_args) -> None:
        import socket
        import threading

        import uvicorn

        if port is None:
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                port = probe.getsockname()[1]
        self.port = port
        self.url = f"{'https' if uvicorn_args.get('ssl_certfile') else 'http'}://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                timeout_graceful_shutdown=1, lifespan="off", **uvicorn_args)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="dashboard-test-server", daemon=True)

    def __enter__(self) -> LiveServer:
        import time

        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the dashboard test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def control_events(request: Envelope, start_offset: int = 20) -> dict[str, Envelope]:
    """Issue 9's events about ``request``'s update, keyed by a short name (times after the flow's)."""
    from bus.contract.events import BatchConfirmed, BatchFinished, UpdateAbortRequested, UpdateStalled

    def child(event: Event, offset: int, minutes: float, key: str = "", source: str = "hotupdate/ops_executor/ops1"):
        return at(child_envelope(request, event, source=source, offset=start_offset + offset, key=key), minutes)

    return {
        "batch1": child(BatchFinished(batch=1, batches=2, ips=["127.0.0.11", "127.0.0.12"], ok_count=3,
                                      failed_count=1, next="await_confirm"), 1, 20, key="1"),
        "confirm2": at(make_envelope(BatchConfirmed(batch=2, confirmed_by="dave"), source="hotupdate/cmdb",
                                     updateid=request.updateid, project=request.project, area=request.area,
                                     sequence=request.sequence + start_offset + 2, causationid=request.id), 21),
        "batch2": child(BatchFinished(batch=2, batches=2, ips=["127.0.0.21", "127.0.0.31"], ok_count=3,
                                      failed_count=0, next="done"), 3, 22, key="2"),
        "abort": at(make_envelope(UpdateAbortRequested(requested_by="erin", reason="wrong build"),
                                  source="hotupdate/cmdb", updateid=request.updateid, project=request.project,
                                  area=request.area, sequence=request.sequence + start_offset + 4,
                                  causationid=request.id), 23),
        "stalled": at(make_envelope(UpdateStalled(silent_targets=["127.0.0.31"], last_event_at=T0,
                                                  stalled_after_seconds=600),
                                    source="hotupdate/cmdb", updateid=request.updateid, project=request.project,
                                    area=request.area, sequence=request.sequence + start_offset + 5,
                                    causationid=request.id), 30),
    }


def aborted_server_flow(updateid: str = "aaaa0000-0000-4000-8000-000000000001") -> list[Item]:
    """A hot_server update aborted after all but one IP reported: 127.0.0.31 never ran."""
    flow = hot_server_flow(updateid=updateid, complete=False)
    request = flow[4][0]
    done = at(child_envelope(request, UpdateCompleted(
        update_type="hot_server", version="004200000", final_result=False, final_data="aborted",
        ok_count=5, failed_count=1, outcome="aborted", not_run=["127.0.0.31"],
    ), source="hotupdate/ops_executor/ops1", offset=30), 30)
    return [*flow[:-1], item(done)]


def aborted_client_flow(updateid: str = "cccc0000-0000-4000-8000-000000000001") -> list[Item]:
    """A hot_client update aborted after one of its two CDN dirs: r1 never started."""
    flow = hot_client_flow(updateid=updateid)
    request = flow[0][0]
    done = at(child_envelope(request, UpdateCompleted(
        update_type="hot_client", version="003100000", final_result=False, final_data="aborted",
        data=[{"cdn_root_url": "res.ssss.chuangyunet.com", "cdn_dir": "t1", "status": True}],
        ok_count=1, failed_count=0, outcome="aborted", not_run=["res.ssss.chuangyunet.com/r1"],
    ), source="hotupdate/ops_executor/ops1", offset=30), 30)
    return [*flow[:3], item(done)]


# --- the dashboard's readers (it refuses anyone not signed in) ---------------------------------------

DASHBOARD_TOKEN = "dashboard-test-token-of-an-auditor-seeing-all"
DASHBOARD_AUTH = {"Authorization": f"Bearer {DASHBOARD_TOKEN}"}
"""Headers of a reader granted every project (``*``), for tests of what the dashboard shows."""


def dashboard_access(**users: tuple[str, list[str]]):
    """A ``dashboard`` configuration: the auditor of :data:`DASHBOARD_TOKEN`, plus ``users``
    (name → (token, granted projects))."""
    from domain.config import DashboardConfig, DashboardUser
    from projections.dashboard.access import hash_token

    table = {"auditor": DashboardUser(projects=["*"], token_sha256=hash_token(DASHBOARD_TOKEN))}
    for name, (token, projects) in users.items():
        table[name] = DashboardUser(projects=projects, token_sha256=hash_token(token))
    return DashboardConfig(users=table)


def write_dashboard_config(directory, dashboard: dict | None = None):
    """A configuration file for ``hotupdate dashboard serve``: projects ssss and snqxz, and the
    ``dashboard`` section given (default: the auditor of :data:`DASHBOARD_TOKEN`)."""
    from pathlib import Path

    import yaml

    from projections.dashboard.access import hash_token

    section = dashboard or {"users": {"auditor": {"projects": ["*"], "token_sha256": hash_token(DASHBOARD_TOKEN)}}}
    path = Path(directory) / "hotupdate.yaml"
    path.write_text(yaml.safe_dump({"projects": {"ssss": {"areas": {}}, "snqxz": {"areas": {}}},
                                    "dashboard": section}), encoding="utf-8")
    return path
