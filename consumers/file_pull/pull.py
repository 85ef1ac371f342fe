"""One pull, start to end: re-list a complete backup, or list the version and copy it atomically."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from consumers.file_pull.copy import AlreadyThere, ListedFile, copy_atomically
from consumers.file_pull.paths import PullPaths
from consumers.file_pull.problems import PullProblem
from consumers.file_pull.tree import scan_tree
from domain.md5 import file_md5

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Pulled:
    """The backup's files, sorted by name; ``reused`` when an earlier delivery had made the copy."""

    files: list[ListedFile]
    reused: bool

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


def pull_version(paths: PullPaths) -> Pulled:
    """Copy ``paths.source`` to ``paths.backup`` unless already done; blocking (run it in a thread).

    Raises :class:`PullProblem` with the reason when the version cannot be pulled.
    """
    if os.path.lexists(paths.backup):
        log.info("backup %s already complete; listing it again", paths.backup)
        return Pulled(list_backup(paths), reused=True)
    files = scan_tree(paths.source)
    try:
        listed = copy_atomically(files, paths.backup)
    except AlreadyThere:
        log.info("backup %s was completed by a concurrent delivery; listing it", paths.backup)
        return Pulled(list_backup(paths), reused=True)
    return Pulled(listed, reused=False)


def list_backup(paths: PullPaths) -> list[ListedFile]:
    """md5 and size of every file of a complete backup, in the same order a fresh copy lists them."""
    try:
        files = scan_tree(paths.backup)
        return [ListedFile(f.name, *file_md5(f.path)) for f in files]
    except PullProblem as problem:  # the backup is ours: any fault in it is not the version's
        raise PullProblem("error", f"backup {paths.backup} is damaged: {problem.detail}") from None
    except OSError as exc:
        raise PullProblem("error", f"backup {paths.backup} cannot be read: {exc.strerror or exc}") from None
