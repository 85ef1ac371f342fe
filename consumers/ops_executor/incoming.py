"""The files rsync delivered for an update, checked against the update's file list before any use."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from bus.contract.events import FileEntry
from consumers.ops_executor.runner import StagedFile
from domain.md5 import file_md5


def verify_incoming(directory: Path, entries: Sequence[FileEntry]) -> tuple[tuple[StagedFile, ...], list[str]]:
    """The update's files under ``directory`` and, if any is missing or differs, what is wrong with each."""
    staged: list[StagedFile] = []
    problems: list[str] = []
    for entry in entries:
        path = directory / entry.file_name
        try:
            md5, size = file_md5(path)
        except OSError:
            problems.append(f"{entry.file_name}(缺失)")
            continue
        if md5 != entry.file_md5:
            problems.append(f"{entry.file_name}(md5不符)")
        elif size != entry.size:
            problems.append(f"{entry.file_name}(大小不符)")
        staged.append(StagedFile(path, entry.file_name))
    return tuple(staged), problems
