"""One realistic example per event type, in the seed document's terms.

Used by the generated ``events.md``, the exported JSON Schemas' ``examples`` and the
round-trip tests, so every documented example is proven to validate.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from bus.contract.events import (
    AnalysisVerdict,
    BatchConfirmed,
    BatchFinished,
    BatchFinishedV1,
    CdnDirFinished,
    CdnTarget,
    Event,
    FileEntry,
    FilesPulled,
    FilesPushed,
    IpFinished,
    PullFailed,
    PullRequested,
    PushFailed,
    PushRequested,
    ReleaseAnnounced,
    ReleaseFile,
    RolloutPlan,
    RolloutPlanV2,
    RsyncTargetRef,
    RsyncTargetResult,
    ServerResult,
    UpdateAbortRequested,
    UpdateCompleted,
    UpdateCompletedV1,
    UpdateRequested,
    UpdateRequestedV1,
    UpdateRequestedV2,
    UpdateStalled,
    UpdateStarted,
)

UPDATE_ID = "350cf0ef-c12e-4bcc-d0df-369a09a4a357"
_FILES = [
    FileEntry(file_name="ebin/role_server.beam", file_md5="abe347d3fdff45f1078102c4637852a5", size=18432),
    FileEntry(file_name="config/skill.config", file_md5="5724c05c650550ac8034129ad7a4d915", size=2210),
]
_TARGET = RsyncTargetRef(name="ssss_cn", ip="127.0.0.1", port=10873, module="cmdb_hot_server", user="cmdb_user")
_FAILED = ServerResult(data="更新失败,不执行erl命令", status=False)  # the seed's text, exactly
_NOT_APPLIED = ServerResult(data="更新失败,不执行erl命令: exit 1: cp: cannot create regular file "
                                 "'/data/game/127.0.0.11/qq_1/ebin/role_server.beam': No space left on device",
                            status=False)  # the seed's text, then why

# One hot_server request, as each version of *update requested* carries it (v2 and v3 add a rollout plan).
_HOT_SERVER_REQUEST: dict[str, Any] = {
    "update_type": "hot_server",
    "version": "004200000",
    "ops_manager": "ops1",
    "update_file_list": _FILES,
    "requested_by": "alice",
    "update_server_list": {
        "game": {"127.0.0.11": ["qq_1", "qq_2"], "127.0.0.12": ["qq_3", "qq_4"]},
        "cross": {"127.0.0.21": ["cross_1", "cross_2"]},
        "cross_center": {"127.0.0.31": ["center_1"]},
    },
    "erlang_cmd_list": ["c:l(role_server)."],
}

EXAMPLES: tuple[Event, ...] = (
    PullRequested(update_type="hot_server", version="004200000", area_name="大陆", requested_by="alice"),
    FilesPulled(
        update_type="hot_server",
        version="004200000",
        source_dir="/data/version_update/server/ssss/cn/004200000/reloadfiles",
        backup_dir=f"/data/hot_backup/hot_server/ssss/cn/{UPDATE_ID}/004200000",
        files=_FILES,
        total_bytes=20642,
    ),
    PullFailed(
        update_type="hot_server",
        version="004200001",
        reason="version_missing",
        detail="/data/version_update/server/ssss/cn/004200001/reloadfiles does not exist",
    ),
    PushRequested(
        update_type="hot_server", version="004200000", files=_FILES, targets=[_TARGET], requested_by="alice"
    ),
    FilesPushed(
        update_type="hot_server",
        version="004200000",
        targets=[RsyncTargetResult(**_TARGET.model_dump(), ok=True, bytes=20642, seconds=0.4)],
    ),
    PushFailed(
        update_type="hot_server",
        version="004200000",
        targets=[
            RsyncTargetResult(
                **_TARGET.model_dump(), ok=False, error="@ERROR: auth failed on module cmdb_hot_server"
            )
        ],
        failed_targets=["ssss_cn"],
        reason="1 of 1 rsync targets failed",
    ),
    UpdateRequestedV1(**_HOT_SERVER_REQUEST),
    UpdateRequestedV2(
        **_HOT_SERVER_REQUEST,
        rollout=RolloutPlan(batch_size=2, pause_seconds=30, on_failure="confirm"),
    ),
    UpdateRequested(
        **_HOT_SERVER_REQUEST,
        rollout=RolloutPlanV2(batch_size=2, pause_seconds=30, on_failure="confirm", analysis_timeout_seconds=900),
    ),
    UpdateStarted(
        update_type="hot_server",
        version="004200000",
        ops_manager="ops1",
        ips=["127.0.0.11", "127.0.0.12", "127.0.0.21", "127.0.0.31"],
    ),
    CdnDirFinished(version="003100000", cdn_root_url="res.ssss.chuangyunet.com", cdn_dir="t1", status=True),
    IpFinished(
        version="004200000",
        ip="127.0.0.11",
        group="game",
        update_data={"qq_1": _NOT_APPLIED, "qq_2": ServerResult(data="2 files applied", status=True)},
        erl_data={"qq_1": _FAILED, "qq_2": ServerResult(data="c:l(role_server). -> {module,role_server}", status=True)},
    ),
    BatchFinishedV1(
        batch=1, batches=2, ips=["127.0.0.11", "127.0.0.12"], ok_count=3, failed_count=1, next="await_confirm"
    ),
    BatchFinished(
        batch=1, batches=2, ips=["127.0.0.11", "127.0.0.12"], ok_count=4, failed_count=0, next="await_analysis"
    ),
    BatchConfirmed(batch=2, confirmed_by="alice"),
    UpdateAbortRequested(requested_by="alice", reason="qq_1 crashes after the update"),
    UpdateCompletedV1(
        update_type="hot_server",
        version="004200000",
        final_result=False,
        final_data="1/7 失败: 127.0.0.11/qq_1(erl失败)",
        ok_count=6,
        failed_count=1,
    ),
    UpdateCompleted(
        update_type="hot_server",
        version="004200000",
        final_result=False,
        final_data="1/4 失败: 127.0.0.11/qq_1(erl失败); 已中止(alice: qq_1 crashes after the update), "
        "2个未执行: 127.0.0.21, 127.0.0.31",
        ok_count=3,
        failed_count=1,
        outcome="aborted",
        not_run=["127.0.0.21", "127.0.0.31"],
    ),
    UpdateStalled(
        silent_targets=["127.0.0.21"],
        last_event_at=datetime(2026, 11, 24, 6, 1, 30, tzinfo=UTC),
        stalled_after_seconds=600,
    ),
    ReleaseAnnounced(
        update_type="hot_server",
        version="004200000",
        files=[ReleaseFile(file_name=f.file_name, file_md5=f.file_md5) for f in _FILES],
        announced_by="ssss-build",
        link="https://ci.example.com/ssss/builds/4200",
    ),
    AnalysisVerdict(
        batch=1, verdict="fail", reason="error rate 4.2% > 1% on the batch's servers", analysed_by="ssss-monitor",
        link="https://grafana.example.com/d/ssss?from=now-15m",
    ),
)

HOT_CLIENT_REQUEST = UpdateRequested(
    update_type="hot_client",
    version="003100000",
    ops_manager="ops1",
    update_file_list=_FILES,
    requested_by="alice",
    client_type=0,
    data=[
        CdnTarget(cdn_root_url="res.ssss.chuangyunet.com", cdn_dir="t1"),
        CdnTarget(cdn_root_url="res.ssss.chuangyunet.com", cdn_dir="r1"),
    ],
)
