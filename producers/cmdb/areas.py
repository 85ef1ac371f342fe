"""Turning what an operator typed (``大陆``, ``cn``) into a configured area: display name and code."""

from __future__ import annotations

from dataclasses import dataclass

from domain.config import HotupdateConfig, ProjectConfig
from domain.types import UpdateType
from producers.cmdb.errors import AmbiguousArea, UnknownArea, UnknownProject


@dataclass(frozen=True)
class ResolvedArea:
    name: str  # display name, keys the rsync targets (RSYNC_MANAGERS)
    code: str  # area code, keys paths, routing and the inventory


def project_config(config: HotupdateConfig, project: str) -> ProjectConfig:
    try:
        return config.projects[project]
    except KeyError:
        known = ", ".join(sorted(config.projects)) or "none"
        raise UnknownProject(f"unknown project {project!r} (known: {known})") from None


def resolve_area(
    config: HotupdateConfig, project: str, update_type: UpdateType, area: str, area_code: str | None = None
) -> ResolvedArea:
    """Resolve a display name or a code; a name with several codes needs ``area_code`` to choose."""
    proj = project_config(config, project)
    names = proj.areas.get(update_type)
    if not names:
        raise UnknownArea(f"project {project!r} has no areas configured for {update_type}")
    if area in names:
        codes = names[area]
        if area_code is not None:
            if area_code not in codes:
                raise UnknownArea(
                    f"area {area!r} of project {project!r} has no code {area_code!r} (codes: {', '.join(codes)})"
                )
            return ResolvedArea(area, area_code)
        if len(codes) != 1:
            raise AmbiguousArea(
                f"area {area!r} of project {project!r} maps to several codes ({', '.join(codes)}): "
                "choose one with area_code"
            )
        return ResolvedArea(area, codes[0])
    name = proj.area_name_of(update_type, area)
    if name is None:
        known = ", ".join(f"{n} ({'/'.join(c)})" for n, c in names.items())
        raise UnknownArea(f"unknown area {area!r} for project {project!r} and {update_type} (known: {known})")
    if area_code is not None and area_code != area:
        raise UnknownArea(f"area {area!r} is itself a code; area_code {area_code!r} contradicts it")
    return ResolvedArea(name, area)
