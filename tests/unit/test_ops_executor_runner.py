"""Host runners: process-group kill on timeout, local copy, ssh quoting (through a real POSIX shell)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from consumers.ops_executor.runner import LocalRunner, SshRunner, StagedFile, run_argv, tar_of
from demo.erlang import process_alive
from domain.config import RunnerConfig


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


def test_ssh_argv_is_batch_mode_with_configured_user_key_and_port():
    runner = SshRunner(RunnerConfig(kind="ssh", ssh_user="deploy", ssh_key=Path("/etc/hu/key"), ssh_port=2222))
    argv = runner.ssh_argv("10.1.1.1", ["erl_call", "-sname", "qq_1", "-e"])
    assert argv[:1] == ["ssh"] and "BatchMode=yes" in argv
    assert argv[argv.index("-p") + 1] == "2222" and argv[argv.index("-i") + 1] == "/etc/hu/key"
    assert argv[argv.index("-l") + 1] == "deploy"
    assert argv[-3:] == ["--", "10.1.1.1", "erl_call -sname qq_1 -e"]


def test_ssh_remote_line_gives_the_remote_shell_back_exactly_the_arguments(tmp_path):
    # ssh hands its last argument to the remote user's shell; sh -c here is that shell.
    pieces = ["printf", "%s\\n", "a b", "it's", '"q"', "$(touch pwned)", "`id`", ";", "&&", "*", "\\n", ""]
    line = SshRunner(RunnerConfig(kind="ssh")).ssh_argv("10.1.1.1", pieces)[-1]
    out = subprocess.run(["sh", "-c", line], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[:-1] == pieces[2:]
    assert not (tmp_path / "pwned").exists()


async def test_ssh_put_files_streams_a_tar_that_remote_tar_unpacks(tmp_path):
    # A stand-in for the ssh client: runs the remote line with sh here, as sshd hands it to the user's shell.
    fake_ssh = tmp_path / "ssh"
    fake_ssh.write_text(f'#!{sys.executable}\nimport subprocess, sys\n'
                        'sys.exit(subprocess.run(["sh", "-c", sys.argv[-1]]).returncode)\n')
    fake_ssh.chmod(0o755)
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "x.beam").write_bytes(b"X" * 1000)
    dest = tmp_path / "dest dir"
    dest.mkdir()
    runner = SshRunner(RunnerConfig(kind="ssh"), ssh_binary=str(fake_ssh))
    result = await runner.put_files("10.1.1.1", [StagedFile(src / "d" / "x.beam", "d/x.beam")], str(dest),
                                    timeout=10)
    assert result.ok, result.describe()
    assert (dest / "d" / "x.beam").read_bytes() == b"X" * 1000
    assert os.stat(dest / "d" / "x.beam").st_uid == 0


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
