"""The README's first command, as a newcomer runs it: `hotupdate demo --once` exits 0 only on the expected outcome."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = [pytest.mark.rabbit, pytest.mark.erlang, pytest.mark.rsync, pytest.mark.slow]


def _leftovers(workdir) -> list[str]:
    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if str(workdir) in line or "-sname hud_" in line]


def test_demo_runs_a_whole_hot_update_and_leaves_nothing_running(tmp_path):
    workdir = tmp_path / "demo"
    done = subprocess.run([sys.executable, "-m", "cli.main", "demo", "--once", "--workdir", str(workdir)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    out = done.stdout
    assert "Outcome: as expected" in out
    assert "FAIL ip 127.0.0.12  (qq_4: 更新失败,不执行erl命令" in out
    assert "CDN dirs with the new resources: t1, test_r1, s1, r1" in out
    for log in ("file_pull", "file_push", "ops_executor", "projection", "cmdb", "dashboard"):
        assert (workdir / "logs" / f"{log}.log").exists()
    assert _leftovers(workdir) == []
