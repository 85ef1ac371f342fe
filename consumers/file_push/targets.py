"""Resolving the targets a *push requested* names against the receiver's configuration.

The event only names targets; the daemon, user and password file always come from the
configuration, so an event cannot point a push at a host or a secret the config does not know.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bus.contract.events import RsyncTargetRef
from consumers.file_push.rsync import DaemonModule
from domain.config import ProjectConfig, RsyncTarget
from domain.types import UpdateType


@dataclass(frozen=True)
class ResolvedTarget:
    ref: RsyncTargetRef  # as configured (what results report)
    daemon: DaemonModule


@dataclass(frozen=True)
class RefusedTarget:
    ref: RsyncTargetRef  # as the event asked
    why: str


def resolve_targets(
    project: ProjectConfig, update_type: UpdateType, area: str, refs: Sequence[RsyncTargetRef]
) -> tuple[list[ResolvedTarget], list[RefusedTarget]]:
    """Split the event's targets into those the config has for this area, and the others with why."""
    configured = {t.name: t for t in project.rsync_targets}
    resolved: list[ResolvedTarget] = []
    refused: list[RefusedTarget] = []
    seen: set[str] = set()
    for ref in refs:
        if ref.name in seen:
            refused.append(RefusedTarget(ref, "named twice in the request"))
            continue
        seen.add(ref.name)
        target = configured.get(ref.name)
        if target is None:
            refused.append(RefusedTarget(ref, "not an rsync target of this project in the receiver's configuration"))
            continue
        why = _mismatch(target, ref, project, update_type, area)
        if why:
            refused.append(RefusedTarget(ref, why))
            continue
        resolved.append(ResolvedTarget(_ref_of(target), _daemon_of(target)))
    return resolved, refused


def _mismatch(
    target: RsyncTarget, ref: RsyncTargetRef, project: ProjectConfig, update_type: UpdateType, area: str
) -> str:
    """Why the configured ``target`` does not fit the request ("" when it does)."""
    asked = (ref.ip, ref.port, ref.module, ref.user)
    known = (target.ip, target.port, target.module, target.user)
    if asked != known:
        return (
            f"asks for {ref.user}@{ref.ip}:{ref.port}/{ref.module} but the configuration has "
            f"{target.user}@{target.ip}:{target.port}/{target.module}"
        )
    if area not in project.area_codes(update_type, target.area):
        return f"serves area {target.area!r}, which does not include {area!r} for {update_type}"
    return ""


def _ref_of(target: RsyncTarget) -> RsyncTargetRef:
    return RsyncTargetRef(name=target.name, ip=target.ip, port=target.port, module=target.module, user=target.user)


def _daemon_of(target: RsyncTarget) -> DaemonModule:
    return DaemonModule(
        ip=target.ip, port=target.port, module=target.module, user=target.user, password_file=target.pass_file
    )
