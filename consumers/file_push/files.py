"""Checking the chosen files before anything is sent: inside the update's backup, unchanged.

File names come from an event, so each must name a regular file *inside* the backup
directory with no symlink on the way (checked on resolved paths), and still have the
size and md5 the operator confirmed.
"""

from __future__ import annotations

import stat
from collections.abc import Sequence
from pathlib import Path

from bus.contract.events import FileEntry
from domain.md5 import file_md5
from domain.types import check_relative_path


class FileCheckError(Exception):
    """A chosen file may not or cannot be pushed; the message says which and why."""


def check_files(backup_dir: Path, files: Sequence[FileEntry]) -> None:
    """Raise :class:`FileCheckError` unless every file is a regular file of ``backup_dir`` as listed."""
    try:
        real_backup = backup_dir.resolve(strict=True)
    except FileNotFoundError:
        raise FileCheckError(f"backup directory {backup_dir} does not exist (was the version pulled here?)") from None
    except (OSError, RuntimeError) as exc:
        raise FileCheckError(f"backup directory {backup_dir} cannot be resolved: {exc}") from None
    names = [f.file_name for f in files]
    if len(set(names)) != len(names):
        raise FileCheckError("the same file is chosen twice")
    for entry in files:
        _check_one(backup_dir, real_backup, entry)


def _check_one(backup_dir: Path, real_backup: Path, entry: FileEntry) -> None:
    name = entry.file_name
    try:
        check_relative_path(name)  # already checked by the event model; cheap to be sure here
    except ValueError as exc:
        raise FileCheckError(f"{name!r} refused: {exc}") from None
    path = backup_dir / name
    try:
        real = path.resolve(strict=True)
    except FileNotFoundError:
        raise FileCheckError(f"{name} is not in the backup {backup_dir}") from None
    except (OSError, RuntimeError) as exc:
        raise FileCheckError(f"{name} cannot be resolved: {exc}") from None
    # Equality, not mere containment: a symlink anywhere below the backup changes the
    # resolved path, and rsync would skip or follow it instead of sending the listed file.
    if real != real_backup / name:
        where = "outside the backup directory" if not real.is_relative_to(real_backup) else "through a symlink"
        raise FileCheckError(f"{name} refused: it leads {where} ({real})")
    try:
        st = path.lstat()
        if not stat.S_ISREG(st.st_mode):
            raise FileCheckError(f"{name} is not a regular file")
        if st.st_size != entry.size:
            raise FileCheckError(f"{name} has {st.st_size} bytes, not the {entry.size} listed")
        md5, _size = file_md5(path)
    except OSError as exc:
        raise FileCheckError(f"{name} cannot be read: {exc.strerror or exc}") from None
    if md5 != entry.file_md5:
        raise FileCheckError(f"{name} has md5 {md5}, not the {entry.file_md5} listed")
