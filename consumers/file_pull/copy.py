"""Copying a listed tree to its backup directory so that the backup appears whole or not at all.

Files are written (and hashed on the way, one read per file) into a hidden temporary
sibling of the destination, flushed to disk, then the directory is renamed into place.
A backup directory that exists is therefore complete, which is what lets a redelivered
request re-list it instead of copying again.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from consumers.file_pull.problems import PullProblem
from consumers.file_pull.tree import SourceFile
from domain.md5 import md5_stream

DIR_MODE = 0o755  # mkdtemp makes 0700; the backup is read by rsync and by operators


@dataclass(frozen=True)
class ListedFile:
    name: str
    md5: str
    size: int


class AlreadyThere(Exception):
    """Another attempt renamed its complete copy into place first."""


def copy_atomically(files: list[SourceFile], dest: Path) -> list[ListedFile]:
    """Copy ``files`` below ``dest`` (which must not exist) and return their md5s and sizes.

    Raises :class:`AlreadyThere` when ``dest`` appeared meanwhile, :class:`PullProblem`
    when a source cannot be read (``unreadable``) or the copy cannot be written (``error``).
    """
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
    except OSError as exc:
        raise PullProblem("error", f"cannot create {dest.parent}: {exc.strerror or exc}") from None
    try:
        listed = [_copy_one(f, tmp) for f in files]
        _fsync_dir_tree(tmp)
        os.chmod(tmp, DIR_MODE)
        try:
            os.rename(tmp, dest)
        except OSError as exc:
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                raise AlreadyThere(str(dest)) from None
            raise
        _fsync_dir(dest.parent)
        return listed
    except OSError as exc:
        raise PullProblem("error", f"cannot write the backup {dest}: {exc.strerror or exc}") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _copy_one(source: SourceFile, tmp: Path) -> ListedFile:
    try:
        src = source.path.open("rb")
    except OSError as exc:
        raise PullProblem("unreadable", f"{source.name}: {exc.strerror or exc}") from None
    target = tmp / source.name
    target.parent.mkdir(parents=True, exist_ok=True)
    with src, target.open("xb") as sink:
        md5, size = md5_stream(src, sink)
        sink.flush()
        os.fsync(sink.fileno())
        st = os.fstat(src.fileno())
    # Keeping the version's mtimes lets operators compare a backup with its source.
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    return ListedFile(source.name, md5, size)


def _fsync_dir_tree(root: Path) -> None:
    for dirpath, _dirs, _files in os.walk(root):
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with contextlib.suppress(OSError):  # some filesystems refuse fsync on directories
            os.fsync(fd)
    finally:
        os.close(fd)
