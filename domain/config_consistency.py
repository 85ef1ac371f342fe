"""Contradictions within one configuration: parts that are each valid but cannot all be true.

``HotupdateConfig`` refuses to load with any of them (every one is listed, not just the first),
so every process, on every machine, sees the same verdict; ``hotupdate config check`` prints them.
Each names the dotted key, the value and why it cannot work. :func:`oddities` lists what is
legal but probably not meant (the check reports them as warnings).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from domain.types import ServerGroup

if TYPE_CHECKING:
    from domain.config import HotupdateConfig, ProjectConfig


@dataclass(frozen=True)
class Contradiction:
    key: str  # dotted path in the file, e.g. receivers.file_push8.projects
    message: str  # the value and why it cannot work

    def __str__(self) -> str:
        return f"{self.key}: {self.message}"


class ConfigContradictions(ValueError):
    """Raised by the configuration's validator; one line per contradiction, each naming its key."""

    def __init__(self, problems: list[Contradiction]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


def contradictions(config: HotupdateConfig) -> list[Contradiction]:
    """Every contradiction in ``config`` (empty when it is consistent). Unknown names are checked elsewhere."""
    return [
        *_receivers_share_a_project(config),
        *_targets_and_their_ops_manager(config),
        *_areas_and_inventories(config),
        *_local_runner_reaches_only_loopback(config),
        *_runner_settings_fit_its_kind(config),
        *_purge_commands_of_served_projects(config),
    ]


def oddities(config: HotupdateConfig) -> list[Contradiction]:
    """Legal but probably not meant: an ops manager no target names, an area nothing can push to."""
    out = []
    for name, manager in config.ops_managers.items():
        for key in manager.projects:
            proj = config.projects.get(key)
            if proj and proj.rsync_targets and not any(t.ops_manager == name for t in proj.rsync_targets):
                out.append(Contradiction(
                    f"ops_managers.{name}.projects",
                    f"no rsync target of project {key!r} names ops manager {name!r}: it never receives {key}'s files",
                ))
    for key, proj in config.projects.items():
        if not proj.rsync_targets:
            continue  # config check says so for the whole project
        for update_type, names in proj.areas.items():
            for area_name in names:
                if not any(t.area == area_name for t in proj.rsync_targets):
                    out.append(Contradiction(
                        f"projects.{key}.areas.{update_type}.{area_name}",
                        "no rsync target has this area: its updates cannot be pushed",
                    ))
    return out


def _receivers_share_a_project(config: HotupdateConfig) -> Iterator[Contradiction]:
    claimed: dict[str, str] = {}
    for name, receiver in config.receivers.items():
        for project in receiver.projects:
            first = claimed.setdefault(project, name)
            if first != name:
                yield Contradiction(
                    f"receivers.{name}.projects",
                    f"project {project!r} is also served by receiver {first!r}: both would pull and push "
                    "every update of it; a project has one version receiver",
                )


def _targets_and_their_ops_manager(config: HotupdateConfig) -> Iterator[Contradiction]:
    for key, proj in config.projects.items():
        by_area: dict[str, set[str]] = {}
        for target in proj.rsync_targets:
            by_area.setdefault(target.area, set()).add(target.ops_manager)
            manager = config.ops_managers.get(target.ops_manager)
            if manager is not None and key not in manager.projects:
                yield Contradiction(
                    f"projects.{key}.rsync_targets.{target.name}.ops_manager",
                    f"ops manager {target.ops_manager!r} does not list project {key!r} in "
                    f"ops_managers.{target.ops_manager}.projects: it would receive the files but never the "
                    "update request",
                )
        for area, managers in by_area.items():
            if len(managers) > 1:
                yield Contradiction(
                    f"projects.{key}.rsync_targets",
                    f"the targets of area {area!r} name several ops managers ({', '.join(sorted(managers))}): "
                    "one update request goes to one ops manager, so the CMDB refuses every update of this area",
                )


def _areas_and_inventories(config: HotupdateConfig) -> Iterator[Contradiction]:
    for key, proj in config.projects.items():
        all_codes: set[str] = set()
        for update_type, names in proj.areas.items():
            seen: dict[str, str] = {}
            for area_name, codes in names.items():
                where = f"projects.{key}.areas.{update_type}.{area_name}"
                for code in codes:
                    all_codes.add(code)
                    first = seen.setdefault(code, area_name)
                    if first != area_name:
                        yield Contradiction(where, f"area code {code!r} is also listed under {first!r}: the code "
                                                   "cannot tell which area's rsync targets to use")
                    inventory = proj.inventory.get(code)
                    if update_type == "hot_server" and not (inventory and _has_servers(inventory.servers)):
                        yield Contradiction(where, f"area code {code!r} has no game server in "
                                                   f"projects.{key}.inventory.{code}.servers: every hot_server "
                                                   "update of it would be refused")
                    if update_type == "hot_client" and not (inventory and inventory.cdn):
                        yield Contradiction(where, f"area code {code!r} has no CDN dir in "
                                                   f"projects.{key}.inventory.{code}.cdn: every hot_client "
                                                   "update of it would be refused")
        for code in proj.inventory:
            if code not in all_codes:
                yield Contradiction(f"projects.{key}.inventory.{code}",
                                    f"{code!r} is not an area code of projects.{key}.areas: no update reaches "
                                    "this inventory (a misspelt code?)")


def _has_servers(servers: Mapping[ServerGroup, Mapping[str, list[str]]]) -> bool:
    return any(names for ips in servers.values() for names in ips.values())


def _served_codes(proj: ProjectConfig, key: str, manager_name: str, manager_projects: list[str]) -> set[str]:
    """The hot_server area codes whose updates ``manager_name`` runs: its targets' areas (or, for an
    area with no target, every area of a project it lists: a tool may request those directly)."""
    codes: set[str] = set()
    for area_name, area_codes in proj.areas.get("hot_server", {}).items():
        managers = {t.ops_manager for t in proj.rsync_targets if t.area == area_name}
        if manager_name in managers or (not managers and key in manager_projects):
            codes.update(area_codes)
    return codes


def _local_runner_reaches_only_loopback(config: HotupdateConfig) -> Iterator[Contradiction]:
    for name, manager in config.ops_managers.items():
        if manager.runner.kind != "local":
            continue
        for key, proj in config.projects.items():
            for code in sorted(_served_codes(proj, key, name, manager.projects)):
                inventory = proj.inventory.get(code)
                for group, ips in (inventory.servers.items() if inventory else ()):
                    for ip in ips:
                        if not ipaddress.ip_address(ip).is_loopback:
                            yield Contradiction(
                                f"projects.{key}.inventory.{code}.servers.{group}.{ip}",
                                f"ops manager {name!r} updates this area with the local runner, where an IP is "
                                "only a placeholder in server_root on its own disk: host "
                                f"{ip} would be reported updated without being touched (set "
                                f"ops_managers.{name}.runner.kind: ssh, or use 127.x addresses)",
                            )


def _runner_settings_fit_its_kind(config: HotupdateConfig) -> Iterator[Contradiction]:
    for name, manager in config.ops_managers.items():
        runner = manager.runner
        if runner.kind != "local":
            continue
        for field in ("ssh_user", "ssh_key", "ssh_port", "ssh_known_hosts"):
            if field in runner.model_fields_set and getattr(runner, field) is not None:
                yield Contradiction(
                    f"ops_managers.{name}.runner.{field}",
                    f"{getattr(runner, field)} is set, but runner.kind is local, which never uses ssh "
                    "(did you mean kind: ssh?)",
                )


def _purge_commands_of_served_projects(config: HotupdateConfig) -> Iterator[Contradiction]:
    for name, manager in config.ops_managers.items():
        for project in manager.purge_cmd:
            if project not in manager.projects:
                yield Contradiction(f"ops_managers.{name}.purge_cmd.{project}",
                                    f"ops manager {name!r} does not serve project {project!r}: "
                                    "the command would never run")
