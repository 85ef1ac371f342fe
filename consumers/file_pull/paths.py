"""The two directories of a pull, from the receiver's configuration and the event (see domain.layout)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from domain.config import ReceiverConfig
from domain.layout import receiver_backup_dir, version_source_dir
from domain.types import UpdateType


@dataclass(frozen=True)
class PullPaths:
    """``source``: the version's ``reloadfiles``; ``backup``: the update's copy of it."""

    source: Path
    backup: Path


def pull_paths(
    receiver: ReceiverConfig, update_type: UpdateType, project: str, area: str, update_id: str, version: str
) -> PullPaths:
    """Both directories of one update's pull.

    The source is left unresolved on purpose: a project directory that is a symlink
    (the seed's ``server/ssss -> server/x``) is followed by the operating system when
    the tree is read, and the event reports the path operators know.
    """
    return PullPaths(
        source=version_source_dir(receiver.version_root, update_type, project, area, version),
        backup=receiver_backup_dir(receiver.backup_root, update_type, project, area, update_id, version),
    )
