"""Host runners: process-group kill on timeout, local copy; the ssh runner's quoting and remote scripts
(through a real POSIX shell)."""

from __future__ import annotations

import asyncio
import os
import shlex
import subprocess
import time
from pathlib import Path

import pytest

from consumers.ops_executor.runner import LocalRunner, StagedFile, run_argv
from consumers.ops_executor.ssh_runner import INSTALL_SCRIPT, STAGE_SCRIPT, STAGING_ROOT, _dir_name, tar_of
from demo.erlang import process_alive


async def test_timeout_kills_the_whole_process_group_and_says_so(tmp_path):
    pidfile = tmp_path / "grandchild.pid"
    started = time.monotonic()
    result = await run_argv(["sh", "-c", f"sleep 60 & echo $! > {pidfile}; wait"], timeout=1)
    assert result.ok is False and result.error == "timeout after 1s"
    assert time.monotonic() - started < 10
    grandchild = int(pidfile.read_text())
    for _ in range(50):
        if not process_alive(grandchild):
            break
        await asyncio.sleep(0.05)
    assert not process_alive(grandchild)


async def test_cancelled_command_is_killed_too(tmp_path):
    pidfile = tmp_path / "child.pid"
    task = asyncio.create_task(run_argv(["sh", "-c", f"echo $$ > {pidfile}; exec sleep 60"], timeout=60))
    while not pidfile.exists() or not pidfile.read_text().strip():
        await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not process_alive(int(pidfile.read_text()))


async def test_missing_program_is_a_failed_result_not_an_exception():
    result = await run_argv(["/nonexistent/hotupdate-tool"], timeout=5)
    assert result.ok is False and "cannot run" in result.error


async def test_local_copy_puts_each_file_at_its_relative_path_and_needs_the_directory(tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.beam").write_bytes(b"A")
    (src / "sub" / "b.beam").write_bytes(b"B")
    files = [StagedFile(src / "a.beam", "a.beam"), StagedFile(src / "sub" / "b.beam", "sub/b.beam")]
    dest = tmp_path / "server" / "ebin"
    missing = await LocalRunner().put_files("127.0.0.1", files, str(dest), timeout=5)
    assert missing.ok is False and not dest.exists()  # a wrong server_root is not silently created
    dest.mkdir(parents=True)
    result = await LocalRunner().put_files("127.0.0.1", files, str(dest), timeout=5)
    assert result.ok
    assert (dest / "a.beam").read_bytes() == b"A" and (dest / "sub" / "b.beam").read_bytes() == b"B"
    assert sorted(p.name for p in dest.rglob("*")) == ["a.beam", "b.beam", "sub"]


def test_remote_line_gives_the_remote_shell_back_exactly_the_arguments(tmp_path):
    # sshd hands the command line to the user's shell; sh -c here is that shell.
    pieces = ["printf", "%s\\n", "a b", "it's", '"q"', "$(touch pwned)", "`id`", ";", "&&", "*", "\\n", ""]
    line = shlex.join(pieces)  # what the ssh runner sends
    out = subprocess.run(["sh", "-c", line], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[:-1] == pieces[2:]
    assert not (tmp_path / "pwned").exists()


def _remote(script: str, *args: str, stdin: bytes | None = None, cwd: Path) -> subprocess.CompletedProcess[bytes]:
    """Run one of the ssh runner's scripts as the game host's shell would (sh -c, arguments apart)."""
    return subprocess.run(["sh", "-c", shlex.join(["sh", "-c", script, "sh", *args])], input=stdin, cwd="/",
                          env={**os.environ, "HOME": str(cwd)},
                          capture_output=True)


def test_staged_files_are_installed_beside_then_renamed_and_need_the_directory(tmp_path):
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "x.beam").write_bytes(b"X" * 1000)
    (src / "a b.beam").write_bytes(b"A")
    files = [StagedFile(src / "d" / "x.beam", "d/x.beam"), StagedFile(src / "a b.beam", "a b.beam")]
    home = tmp_path / "home"
    home.mkdir()
    staging = f"{STAGING_ROOT}/u1"
    assert _remote(STAGE_SCRIPT, staging, stdin=tar_of(files), cwd=home).returncode == 0
    assert oct((home / staging).stat().st_mode & 0o777) == "0o700"
    dest = tmp_path / "dest dir"

    missing = _remote(INSTALL_SCRIPT, staging, str(dest), "d/x.beam", "a b.beam", cwd=home)
    assert missing.returncode != 0 and b"not a directory" in missing.stderr and not dest.exists()
    dest.mkdir()
    done = _remote(INSTALL_SCRIPT, staging, str(dest), "d/x.beam", "a b.beam", cwd=home)

    assert done.returncode == 0, done.stderr
    assert (dest / "d" / "x.beam").read_bytes() == b"X" * 1000 and (dest / "a b.beam").read_bytes() == b"A"
    assert sorted(p.name for p in dest.rglob("*")) == ["a b.beam", "d", "x.beam"]  # no temporary left
    assert os.stat(dest / "d" / "x.beam").st_uid == os.getuid()


def test_a_staging_directory_is_named_by_a_harmless_update_id_or_its_digest():
    assert _dir_name("0b6f3c1e-1c0a-4f7e-9d55-2d1f1c1e0a11") == "0b6f3c1e-1c0a-4f7e-9d55-2d1f1c1e0a11"
    assert "/" not in _dir_name("../../etc") and len(_dir_name("../../etc")) == 32


def test_tar_of_names_members_by_their_relative_names(tmp_path):
    import io
    import tarfile

    (tmp_path / "a").write_bytes(b"1")
    with tarfile.open(fileobj=io.BytesIO(tar_of([StagedFile(tmp_path / "a", "x/y.beam")]))) as tar:
        assert tar.getnames() == ["x/y.beam"]


def _many_files(root: Path, count: int) -> list[StagedFile]:
    src = root / "src"
    src.mkdir()
    files = []
    for i in range(count):
        path = src / f"m{i}.beam"
        path.write_bytes(b"x" * 2048)
        files.append(StagedFile(path, f"m{i}.beam"))
    return files


def _landed(dest: Path) -> tuple[int, list[str]]:
    """Files in place, and any partial (temporary) file left behind."""
    names = [p.name for p in dest.iterdir()]
    return sum(1 for n in names if n.endswith(".beam") and not n.startswith(".")), [
        n for n in names if "hotupdate-tmp" in n]


async def test_a_timed_out_local_copy_has_stopped_when_the_timeout_is_reported(tmp_path):
    files = _many_files(tmp_path, 3000)  # each copy is fsynced: far more than 0.2 s of work
    dest = tmp_path / "server" / "ebin"
    dest.mkdir(parents=True)

    result = await LocalRunner().put_files("127.0.0.1", files, str(dest), timeout=0.2)

    assert result.ok is False and result.error == "timeout after 0.2s"
    landed, partial = _landed(dest)
    assert 0 < landed < len(files) and partial == []  # cut off, and no half-written file
    await asyncio.sleep(1.0)
    assert _landed(dest) == (landed, [])  # nothing lands after the failure was reported


async def test_a_cancelled_local_copy_has_stopped_when_the_cancellation_returns(tmp_path):
    files = _many_files(tmp_path, 3000)
    dest = tmp_path / "server" / "ebin"
    dest.mkdir(parents=True)
    task = asyncio.create_task(LocalRunner().put_files("127.0.0.1", files, str(dest), timeout=600))
    while _landed(dest)[0] < 10:
        await asyncio.sleep(0.01)

    task.cancel()  # what the per-IP deadline and a shutdown do
    with pytest.raises(asyncio.CancelledError):
        await task

    landed, partial = _landed(dest)
    assert landed < len(files) and partial == []
    await asyncio.sleep(1.0)
    assert _landed(dest) == (landed, [])
