"""Where an update's files live on each machine, in one place (the seed's directory layout).

- version receiver, source: ``<version_root>/<server|client>/<project>/<area>/<version>/reloadfiles``
- version receiver, backup: ``<backup_root>/hot_<server|client>/<update path>``
- ops manager, pushed files: ``<incoming_root>/<update path>``

where the *update path* is ``<project>/<area>/<update id>/<version>``. The backup and the
ops manager share it on purpose: file_push sends ``<update path>/<file>`` relative to
``<backup_root>/hot_<kind>`` into the rsync module's root, so rsync creates the directories
itself (no ``--mkpath``, which older daemons lack) and the ops manager finds every file at
``incoming_dir(...) / file``.

Every component is checked again here, because these strings become paths.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath
from typing import Final

from domain.types import UpdateType

_KIND: Final[dict[str, str]] = {"hot_server": "server", "hot_client": "client"}
_WORD = re.compile(r"^[a-z0-9_]{1,64}$")
_VERSION = re.compile(r"^[0-9]{1,32}$")
_UPDATE_ID = re.compile(r"^[A-Za-z0-9-]{1,64}$")
SOURCE_LEAF: Final = "reloadfiles"


class LayoutError(ValueError):
    """A path component is not safe to use (it would leave its directory, or is malformed)."""


def _check(what: str, value: str, pattern: re.Pattern[str]) -> str:
    if not pattern.fullmatch(value):
        raise LayoutError(f"{what} {value!r} is not usable in a path")
    return value


def kind_of(update_type: UpdateType) -> str:
    """``hot_server`` → ``server``, ``hot_client`` → ``client`` (the seed's directory names)."""
    try:
        return _KIND[update_type]
    except KeyError:
        raise LayoutError(f"unknown update type {update_type!r}") from None


def update_path(project: str, area: str, update_id: str, version: str) -> PurePosixPath:
    """``<project>/<area>/<update id>/<version>``: an update's directory below a type root or a module."""
    return PurePosixPath(
        _check("project", project, _WORD),
        _check("area code", area, _WORD),
        _check("update id", update_id, _UPDATE_ID),
        _check("version", version, _VERSION),
    )


def version_source_dir(version_root: Path, update_type: UpdateType, project: str, area: str, version: str) -> Path:
    """The version's ``reloadfiles`` directory on the version receiver (the seed's ``cp -r`` source)."""
    return (
        version_root
        / kind_of(update_type)
        / _check("project", project, _WORD)
        / _check("area code", area, _WORD)
        / _check("version", version, _VERSION)
        / SOURCE_LEAF
    )


def backup_type_root(backup_root: Path, update_type: UpdateType) -> Path:
    """``<backup_root>/hot_<server|client>``: the directory file_push sends relative to."""
    return backup_root / f"hot_{kind_of(update_type)}"


def receiver_backup_dir(
    backup_root: Path, update_type: UpdateType, project: str, area: str, update_id: str, version: str
) -> Path:
    """The update's copy of the version on the version receiver (the seed's ``cp -r`` destination)."""
    return backup_type_root(backup_root, update_type) / update_path(project, area, update_id, version)


def incoming_dir(incoming_root: Path, project: str, area: str, update_id: str, version: str) -> Path:
    """Where the ops manager's rsync module receives the update's files."""
    return incoming_root / update_path(project, area, update_id, version)
