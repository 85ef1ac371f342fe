"""Listing a version's files: every regular file below a root, with names safe to put in an event.

Symlinks inside the tree are followed only while they stay inside it (a build may link
one file to another); anything pointing elsewhere, dangling, looping, or not a regular
file or directory makes the version unreadable rather than silently copied or skipped.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from consumers.file_pull.problems import PullProblem
from domain.types import check_relative_path

MAX_NAME = 1024  # FileEntry.file_name's limit


@dataclass(frozen=True)
class SourceFile:
    """A regular file of the tree: its name relative to the root (POSIX) and where to read it."""

    name: str
    path: Path


def scan_tree(root: Path) -> list[SourceFile]:
    """Every regular file below ``root``, sorted by name; raise :class:`PullProblem` when that is impossible."""
    try:
        st = root.stat()  # follows symlinks: a symlinked project directory is fine
    except FileNotFoundError:
        raise PullProblem("version_missing", f"{_missing_part(root)} does not exist") from None
    except OSError as exc:
        raise PullProblem("unreadable", f"{root}: {exc.strerror or exc}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise PullProblem("unreadable", f"{root} is not a directory")
    real_root = root.resolve()
    files: list[SourceFile] = []
    _walk(root, real_root, "", real_root, {real_root}, files)
    if not files:
        raise PullProblem("empty", f"{root} holds no files")
    return sorted(files, key=lambda f: f.name)


def _walk(
    directory: Path, real_dir: Path, prefix: str, real_root: Path, ancestors: set[Path], out: list[SourceFile]
) -> None:
    try:
        with os.scandir(directory) as entries:
            names = sorted(entry.name for entry in entries)
    except OSError as exc:
        raise PullProblem("unreadable", f"{directory}: {exc.strerror or exc}") from None
    for name in names:
        rel = _checked_name(prefix + name, directory)
        path = directory / name
        real = _real_path(path, real_dir / name, rel, real_root)
        try:
            st = path.stat()
        except OSError as exc:
            raise PullProblem("unreadable", f"{rel}: {exc.strerror or exc}") from None
        if stat.S_ISREG(st.st_mode):
            out.append(SourceFile(rel, path))
        elif stat.S_ISDIR(st.st_mode):
            if real in ancestors:
                raise PullProblem("unreadable", f"{rel}: symlink loop")
            _walk(path, real, rel + "/", real_root, ancestors | {real}, out)
        else:
            raise PullProblem("unreadable", f"{rel} is not a regular file or directory")


def _checked_name(rel: str, directory: Path) -> str:
    try:
        rel.encode("utf-8")  # undecodable bytes arrive as surrogates and cannot travel in JSON
        if len(rel) > MAX_NAME:
            raise ValueError(f"{rel[:80]!r}… is longer than {MAX_NAME} characters")
        return check_relative_path(rel)
    except (UnicodeEncodeError, ValueError) as exc:
        raise PullProblem("unreadable", f"a file name in {directory} cannot be listed: {exc}") from None


def _real_path(path: Path, unlinked: Path, rel: str, real_root: Path) -> Path:
    """The path with symlinks resolved; refuses links that dangle, loop, or leave the tree."""
    if not path.is_symlink():
        return unlinked
    try:
        real = path.resolve(strict=True)
    except FileNotFoundError:
        raise PullProblem("unreadable", f"{rel} is a dangling symlink") from None
    except (OSError, RuntimeError) as exc:
        raise PullProblem("unreadable", f"{rel}: cannot follow symlink: {exc}") from None
    if not real.is_relative_to(real_root):
        raise PullProblem("unreadable", f"{rel} is a symlink pointing outside the version directory")
    return real


def _missing_part(path: Path) -> str:
    """The deepest missing ancestor is what the operator must fix (often the version directory)."""
    missing = path
    for parent in path.parents:
        if parent.exists():
            break
        missing = parent
    return str(missing)
