"""Where an update goes: rsync targets of the project and area, and the servers or CDN dirs it runs on.

Both come from the configuration; an operator may narrow the servers or CDN dirs to a
subset of the inventory (a canary, or the failed ones of an earlier update).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from bus.contract.events import CdnTarget, RsyncTargetRef
from domain.allowed import Refusal, describe, server_refusals, update_refusals
from domain.config import ProjectConfig
from domain.types import ServerGroup, UpdateType
from producers.cmdb.errors import InvalidChoice, NotAllowed, NotConfigured


def rsync_targets(project: str, proj: ProjectConfig, area_name: str) -> tuple[list[RsyncTargetRef], str]:
    """The rsync targets for ``area_name`` (the seed's RSYNC_MANAGERS) and the one ops manager behind them."""
    targets = [t for t in proj.rsync_targets if t.area == area_name]
    if not targets:
        raise NotConfigured(f"no rsync target is configured for project {project!r}, area {area_name!r}")
    managers = sorted({t.ops_manager for t in targets})
    if len(managers) != 1:
        # One update request goes to one ops manager; a split would need the inventory split too.
        raise NotConfigured(
            f"rsync targets of project {project!r}, area {area_name!r} belong to several ops managers "
            f"({', '.join(managers)}); configure one ops manager per area"
        )
    refs = [RsyncTargetRef(name=t.name, ip=t.ip, port=t.port, module=t.module, user=t.user) for t in targets]
    return refs, managers[0]


def update_targets(
    project: str,
    proj: ProjectConfig,
    area_code: str,
    update_type: UpdateType,
    servers: Sequence[str] | None = None,
    cdn_dirs: Sequence[str] | None = None,
    update_server_list: Mapping[str, Mapping[str, Sequence[str]]] | None = None,
) -> dict[str, Any]:
    """``{"update_server_list": …}`` for hot_server or ``{"data": […]}`` for hot_client, from the inventory.

    An operator narrows by server names (``servers``), by the seed's group → IP → servers
    (``update_server_list``) or by CDN dirs; anything outside the inventory is refused (NotAllowed).
    """
    inventory = proj.inventory.get(area_code)
    where = f"project {project!r}, area code {area_code!r}"
    if update_server_list is not None and (servers is not None or update_type != "hot_server"):
        raise InvalidChoice("update_server_list narrows a hot_server update: give it instead of servers")
    if update_type == "hot_server":
        if cdn_dirs:
            raise InvalidChoice("a hot_server update runs on game servers: choose servers, not cdn_dirs")
        if update_server_list is not None:
            if refused := server_refusals(update_server_list, inventory):
                raise NotAllowed(f"{describe(refused)} (inventory of {where})")
            server_list = {g: {ip: list(names) for ip, names in ips.items() if names}
                           for g, ips in update_server_list.items()}
        else:
            server_list = _server_list(inventory.servers if inventory else {}, servers, where)
        if not any(server_list.values()):
            raise NotConfigured(f"no game server in the inventory of {where}")
        return {"update_server_list": server_list}
    if servers:
        raise InvalidChoice("a hot_client update runs on CDN dirs: choose cdn_dirs, not servers")
    data = _cdn_dirs([CdnTarget(cdn_root_url=c.cdn_root_url, cdn_dir=c.cdn_dir) for c in inventory.cdn]
                     if inventory else [], cdn_dirs, where)
    if not data:
        raise NotConfigured(f"no CDN dir in the inventory of {where}")
    return {"data": [c.model_dump(mode="json") for c in data]}


def _server_list(
    inventory: Mapping[ServerGroup, Mapping[str, list[str]]], chosen: Sequence[str] | None, where: str
) -> dict[str, dict[str, list[str]]]:
    if chosen is None:
        return {group: {ip: list(names) for ip, names in ips.items() if names}
                for group, ips in inventory.items() if ips}
    wanted = set(chosen)
    known = {name for ips in inventory.values() for names in ips.values() for name in names}
    if refused := [Refusal(f"servers[{i}]", s, f"is not in the inventory of {where}")
                   for i, s in enumerate(chosen) if s not in known]:
        raise NotAllowed(describe(refused))
    narrowed: dict[str, dict[str, list[str]]] = {}
    for group, ips in inventory.items():
        for ip, names in ips.items():
            kept = [n for n in names if n in wanted]
            if kept:
                narrowed.setdefault(group, {})[ip] = kept
    return narrowed


def _cdn_dirs(inventory: list[CdnTarget], chosen: Sequence[str] | None, where: str) -> list[CdnTarget]:
    """A chosen dir is named ``<cdn_dir>`` or, when two roots share a dir name, ``<cdn_root_url>/<cdn_dir>``."""
    if chosen is None:
        return list(inventory)
    wanted = set(chosen)
    kept = [c for c in inventory if c.cdn_dir in wanted or f"{c.cdn_root_url}/{c.cdn_dir}" in wanted]
    matched = {c.cdn_dir for c in kept} | {f"{c.cdn_root_url}/{c.cdn_dir}" for c in kept}
    if refused := [Refusal(f"cdn_dirs[{i}]", d, f"is not in the inventory of {where}")
                   for i, d in enumerate(chosen) if d not in matched]:
        raise NotAllowed(describe(refused))
    return kept


def require_allowed(project: str, proj: ProjectConfig, area_code: str, targets: Mapping[str, Any],
                    erlang_cmd_list: Sequence[str]) -> None:
    """Refuse (NotAllowed) an update whose targets or Erlang commands the configuration does not allow now.

    The same rule the ops executor applies to the *update requested* (domain/allowed.py): checked
    again when targets come from an earlier update (retry, rollback) or the configuration changed.
    """
    refused = update_refusals(
        proj, area_code, update_server_list=targets.get("update_server_list"),
        cdn_targets=[(c["cdn_root_url"], c["cdn_dir"]) for c in targets.get("data") or []],
        erlang_cmd_list=erlang_cmd_list,
    )
    if refused:
        raise NotAllowed(f"{describe(refused)} (project {project!r}, area code {area_code!r})")
