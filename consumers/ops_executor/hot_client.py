"""hot_client: put the update's files into each CDN directory's origin, verified, then purge the CDN.

A CDN dir's origin is ``<cdn_origin_root>/<cdn_root_url>/<cdn_dir>``. The files are first
copied into a staging directory beside it (same file system), then each is renamed into
place: a client fetching a file sees the old or the new one, never half of one. The set of
files is not swapped as a whole, because the directory also holds files this update does not
carry. Every file is md5-checked where it landed; then the project's purge command, if any.
A cancelled run (an interrupted update) stops the copy before it returns: a dir whose files
were still being staged gets none of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bus.contract.events import FileEntry, ServerResult
from consumers.ops_executor.runner import CopyStopped, StagedFile, run_argv
from consumers.ops_executor.templates import purge_argv
from domain.md5 import file_md5

log = logging.getLogger(__name__)

CDN_OK = "更新成功"


@dataclass(frozen=True)
class CdnJob:
    """What every CDN dir of one update gets; ``blocked`` says why nothing may be placed."""

    project: str
    area: str
    update_id: str
    version: str
    files: tuple[StagedFile, ...]
    entries: tuple[FileEntry, ...]
    blocked: str | None = None


class CdnUpdater:
    """Places a hot_client update's files under the CDN origin root."""

    def __init__(self, origin_root: Path, *, purge_cmd: Sequence[str] | None, semaphore: asyncio.Semaphore,
                 command_timeout: float) -> None:
        self._origin_root = origin_root
        self._purge_cmd = tuple(purge_cmd) if purge_cmd else None
        self._semaphore = semaphore
        self._command_timeout = command_timeout

    def target_dir(self, cdn_root_url: str, cdn_dir: str) -> Path:
        return self._origin_root / cdn_root_url / cdn_dir

    async def run_dir(self, job: CdnJob, cdn_root_url: str, cdn_dir: str,
                      halt: asyncio.Event | None = None) -> ServerResult | None:
        """Update one CDN dir; the result's ``status`` is the seed's per-dir status.

        None if ``halt`` (an abort) was set before the dir started: nothing was placed.
        """
        if halt is not None and halt.is_set():
            return None
        if job.blocked is not None:
            return ServerResult(data=job.blocked, status=False)
        target = self.target_dir(cdn_root_url, cdn_dir)
        async with self._semaphore:
            if halt is not None and halt.is_set():  # aborted while waiting for its turn
                return None
            stop = threading.Event()
            placing = asyncio.ensure_future(asyncio.to_thread(place_files, job.files, target, job.update_id, stop))
            try:
                await asyncio.shield(placing)
            except asyncio.CancelledError:
                stop.set()  # the thread cannot be killed: it stops before its next file, and we wait for that
                with contextlib.suppress(CopyStopped, OSError):
                    await asyncio.shield(placing)
                raise
            except OSError as exc:
                log.warning("update %s: CDN dir %s not updated: %s", job.update_id, target, exc)
                return ServerResult(data=f"更新失败: {exc.strerror or exc}: {exc.filename or target}", status=False)
            wrong = await asyncio.to_thread(mismatches, target, job.entries)
            if wrong:
                return ServerResult(data=f"md5校验失败: {', '.join(wrong)}", status=False)
            if self._purge_cmd is not None:
                values = {"cdn_root_url": cdn_root_url, "cdn_dir": cdn_dir, "target_dir": str(target),
                          "project": job.project, "area": job.area, "version": job.version,
                          "update_id": job.update_id}
                argv = purge_argv(self._purge_cmd, values, [f.name for f in job.files])
                result = await run_argv(argv, timeout=self._command_timeout)
                if not result.ok:
                    # The origin is right but the CDN may keep serving old copies: not a success.
                    return ServerResult(data=f"文件已更新, 刷新CDN失败: {result.describe()}", status=False)
        return ServerResult(data=CDN_OK, status=True)


def place_files(files: Sequence[StagedFile], target: Path, update_id: str,
                stop: threading.Event | None = None) -> None:
    """Stage ``files`` beside ``target``, then rename each into ``target`` (created if missing).

    ``stop`` set while staging: nothing is placed (:class:`CopyStopped`).
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.hotupdate-{update_id}"
    shutil.rmtree(staging, ignore_errors=True)  # a leftover of an interrupted run of this update
    staging.mkdir()
    try:
        for item in files:
            if stop is not None and stop.is_set():
                raise CopyStopped()
            staged = staging / item.name
            staged.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(item.source, staged)
            with staged.open("rb+") as handle:
                os.fsync(handle.fileno())
        target.mkdir(exist_ok=True)
        for item in files:
            dest = target / item.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / item.name, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def mismatches(target: Path, entries: Sequence[FileEntry]) -> list[str]:
    """Names of files under ``target`` whose md5 is not the one the update lists (or that are missing)."""
    wrong = []
    for entry in entries:
        try:
            md5, _ = file_md5(target / entry.file_name)
        except OSError:
            wrong.append(f"{entry.file_name}(缺失)")
            continue
        if md5 != entry.file_md5:
            wrong.append(entry.file_name)
    return wrong
