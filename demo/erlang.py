"""Real Erlang nodes (tests and the demo): start detached named nodes, talk to them with erl_call, stop them all.

Every node this helper starts is stopped at teardown (``erl_call -q``, then SIGKILL of its
beam process if it is still there), and :meth:`ErlangNodes.stop_all` reports any survivor.

The cookie is never on a command line: ``erl`` and ``erl_call`` run with ``HOME`` pointing at a
private directory holding ``.erlang.cookie`` (as the ops executor runs erl_call), so neither the
nodes' argv nor erl_call's shows it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from domain.erlang_cookie import make_home


class ErlangError(RuntimeError):
    pass


def module_source(module: str, version: int) -> str:
    """An Erlang module that reports ``version`` and counts runs of ``bump/0`` in the file ``runs`` (cwd)."""
    return (
        f"-module({module}).\n"
        "-export([version/0, bump/0]).\n"
        f"version() -> {version}.\n"
        'bump() -> file:write_file("runs", <<"x">>, [append]).\n'
    )


def compile_module(module: str, version: int, out_dir: Path) -> Path:
    """Compile the test module at ``version`` into ``out_dir``; returns the .beam's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as src_dir:
        src = Path(src_dir) / f"{module}.erl"
        src.write_text(module_source(module, version))
        subprocess.run(["erlc", "-o", str(out_dir), str(src)], check=True, timeout=60, capture_output=True)
    return out_dir / f"{module}.beam"


def process_alive(pid: int) -> bool:
    """Whether ``pid`` is a live (not zombie) process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class ErlangNodes:
    """The nodes one test started, all with one cookie."""

    def __init__(self, cookie: str) -> None:
        self.cookie = cookie
        self.home = make_home(cookie)  # HOME of every erl and erl_call started here
        self.pids: dict[str, int] = {}

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "HOME": str(self.home)}

    def start(self, name: str, cwd: Path, code_path: Path) -> int:
        """Start node ``name`` (cwd ``cwd``, ``code_path`` on its code path); returns its OS pid once it answers."""
        subprocess.run(
            ["erl", "-sname", name, "-detached", "-noshell", "-pa", str(code_path)],
            cwd=cwd, check=True, timeout=30, env=self.env,
        )
        deadline = time.monotonic() + 30
        while True:
            out = self.eval(name, "os:getpid()", check=False)
            if out.startswith("{ok,"):
                pid = int(out.split('"')[1])
                self.pids[name] = pid
                return pid
            if time.monotonic() > deadline:
                raise ErlangError(f"node {name} did not come up: {out}")
            time.sleep(0.2)

    def eval(self, name: str, expr: str, *, check: bool = True) -> str:
        """Evaluate ``expr`` on node ``name``; erl_call's printed ``{ok, Value}`` or error."""
        out = subprocess.run(
            ["erl_call", "-sname", name, "-e"],
            input=expr + ".\n", capture_output=True, text=True, timeout=30, env=self.env,
        )
        text = (out.stdout or out.stderr).strip()
        if check and (out.returncode != 0 or not text.startswith("{ok,")):
            raise ErlangError(f"{name}: {expr}: {text}")
        return text

    def apply(self, name: str, module: str, function: str) -> str:
        """``module:function()`` on node ``name``, as erl_call -a prints it."""
        out = subprocess.run(
            ["erl_call", "-sname", name, "-a", f"{module} {function}"],
            capture_output=True, text=True, timeout=30, env=self.env,
        )
        if out.returncode != 0:
            raise ErlangError(f"{name}: {module}:{function}(): {out.stderr.strip()}")
        return out.stdout.strip()

    def stop(self, name: str) -> None:
        pid = self.pids.pop(name)
        subprocess.run(["erl_call", "-sname", name, "-q"], capture_output=True, timeout=30, env=self.env)
        deadline = time.monotonic() + 10
        while process_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if process_alive(pid):
            os.kill(pid, signal.SIGKILL)

    def stop_all(self) -> list[int]:
        """Stop every node; returns the pids still alive afterwards (should be none)."""
        started = list(self.pids.values())
        for name in list(self.pids):
            self.stop(name)
        time.sleep(0.2)
        (self.home / ".erlang.cookie").chmod(0o600)
        shutil.rmtree(self.home, ignore_errors=True)
        return [pid for pid in started if process_alive(pid)]
