"""Child processes of the demo, one per component, as they would run on separate machines.

Each child runs in its own process group with its output in ``logs/<name>.log``; stopping
sends SIGTERM (the components stop gracefully), then SIGKILL to whatever is left.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO


@dataclass
class Child:
    name: str
    argv: list[str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


class Children:
    """Starts, watches and stops the demo's components."""

    def __init__(self, logs: Path, env: dict[str, str], *, verbose: bool = False, cwd: Path | None = None,
                 env_of: dict[str, dict[str, str]] | None = None) -> None:
        self._logs = logs
        self._env = env
        # The work directory: a default relative path of a component (a SQLite file, its lock) lands
        # there, never in the directory the demo was started from.
        self._cwd = cwd
        self._env_of = env_of or {}  # per child name, on top of ``env`` (its own broker login), restarts too
        self._verbose = verbose
        self.children: list[Child] = []

    def start(self, name: str, *args: str) -> Child:
        """Run ``hotupdate <args>`` as child ``name``."""
        argv = [sys.executable, "-m", "cli.main", *args]
        log_path = self._logs / f"{name}.log"
        log = open(log_path, "ab")  # noqa: SIM115 (closed in stop)
        process = subprocess.Popen(
            argv, stdout=subprocess.PIPE if self._verbose else log, stderr=subprocess.STDOUT,
            env={**self._env, **self._env_of.get(name, {})}, start_new_session=True, cwd=self._cwd,
        )
        child = Child(name, argv, log_path, process, log)
        if self._verbose and process.stdout is not None:
            threading.Thread(target=_tee, args=(name, process.stdout, log), daemon=True).start()
        self.children.append(child)
        return child

    def get(self, name: str) -> Child:
        return next(c for c in self.children if c.name == name)

    def kill(self, name: str, sig: signal.Signals = signal.SIGKILL) -> None:
        """Send ``sig`` to child ``name``'s whole group and forget it (fault tests: kill -9 one component)."""
        child = self.get(name)
        if child.process is not None:
            _signal_group(child.process.pid, sig)
            child.process.wait(timeout=30)
            _signal_group(child.process.pid, signal.SIGKILL)
        if child._log is not None:
            child._log.close()
        self.children.remove(child)

    def restart(self, name: str) -> Child:
        """Kill -9 child ``name`` and start it again with the same command line."""
        args = self.get(name).argv[3:]  # after ``python -m cli.main``
        self.kill(name)
        return self.start(name, *args)

    def dead(self) -> list[Child]:
        return [c for c in self.children if not c.alive]

    def stop_all(self, timeout: float = 20.0) -> None:
        for child in self.children:
            if child.alive and child.process is not None:
                _signal_group(child.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for child in self.children:
            if child.process is None:
                continue
            try:
                child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(child.process.pid, signal.SIGKILL)
                child.process.wait(timeout=5)
            # anything the child left in its group (it should be nothing)
            _signal_group(child.process.pid, signal.SIGKILL)
            if child._log is not None:
                child._log.close()


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _tee(name: str, stream: IO[bytes], log: IO[bytes]) -> None:
    for line in iter(stream.readline, b""):
        log.write(line)
        log.flush()
        sys.stderr.write(f"[{name}] {line.decode(errors='replace')}")
