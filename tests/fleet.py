"""A fleet of fake game-server hosts for rollout tests: many "IPs" without many Erlang nodes.

The local runner's ``apply_cmd`` and ``erl_cmd`` point at a tiny script that logs, per game
server, when applying files and each Erlang command started and ended (``<server_root>/log``).
A command ``sleep:<seconds>`` takes that long; a server whose directory holds a file ``fail``
fails its commands.
"""

from __future__ import annotations

import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bus.contract.envelope import Envelope
from bus.contract.events import UpdateRequested
from consumers.ops_executor.executor import Executor
from consumers.ops_executor.state import StateStore
from domain.config import HotupdateConfig
from tests.ops_world import OPS, VERSION, World, envelope_of

HOST_SCRIPT = """\
import pathlib, sys, time
kind, root = sys.argv[1], pathlib.Path(sys.argv[2])
root.mkdir(parents=True, exist_ok=True)
def note(phase):
    with (root / "log").open("a") as log:
        log.write(f"{kind} {phase} {time.time():.6f}\\n")
note("start")
if kind == "erl" and sys.argv[3].startswith("sleep:"):
    time.sleep(float(sys.argv[3][6:]))
if kind == "erl" and (root / "fail").exists():
    print("{error, marked to fail}")
    sys.exit(1)
note("end")
print("ok")
"""


@dataclass(frozen=True)
class Step:
    """One line of a server's log."""

    kind: str  # "apply" or "erl"
    phase: str  # "start" or "end"
    at: float


class Fleet:
    """Hosts ``127.0.0.1`` … for one test, reached through the fake host script."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.script = world.root / "fake_host.py"
        self.script.write_text(HOST_SCRIPT)

    @staticmethod
    def ip(i: int) -> str:
        return f"127.0.0.{i}"

    @staticmethod
    def server(i: int, n: int = 1) -> str:
        return f"qq_{i}_{n}"

    def root_of(self, ip: str, server: str) -> Path:
        return self.world.server_dir(ip, server)

    def config(self, amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/", **ops: Any) -> HotupdateConfig:
        """The world's config with the fake hosts as runner; the inventory holds IPs 1-16, 4 servers each."""
        self.world.allow({"game": {self.ip(i): [self.server(i, n) for n in range(1, 5)] for i in range(1, 17)}})
        runner = {
            "kind": "local",
            "server_root": str(self.world.root / "hosts" / "{ip}" / "{server}"),
            "apply_cmd": [sys.executable, str(self.script), "apply", "{server_root}"],
            "erl_cmd": [sys.executable, str(self.script), "erl", "{server_root}", "{command}"],
        }
        return self.world.config(amqp_url, runner=runner, **ops)

    def executor(self, config: HotupdateConfig | None = None, store: StateStore | None = None) -> Executor:
        config = config or self.config()
        return Executor(ops_manager=OPS, config=config.ops_managers[OPS],
                        store=store or StateStore(self.world.state_url),
                        projects=config.projects)

    def fail(self, ip: str, server: str) -> None:
        root = self.root_of(ip, server)
        root.mkdir(parents=True, exist_ok=True)
        (root / "fail").write_text("this server's commands fail")

    def log(self, ip: str, server: str) -> list[Step]:
        path = self.root_of(ip, server) / "log"
        if not path.exists():
            return []
        steps = []
        for line in path.read_text().splitlines():
            kind, phase, at = line.split()
            steps.append(Step(kind, phase, float(at)))
        return steps

    def commands_run(self, ip: str, server: str) -> int:
        """Erlang commands that ran to their end on this server."""
        return sum(1 for s in self.log(ip, server) if s.kind == "erl" and s.phase == "end")

    def touched(self, ip: str, server: str) -> bool:
        return bool(self.log(ip, server))

    def request(self, ips: int, *, servers_per_ip: int = 1, commands: list[str] | None = None,
                rollout: dict[str, Any] | None = None, update_id: str | None = None,
                ) -> tuple[Envelope, UpdateRequested]:
        """A hot_server update of ``ips`` IPs (``127.0.0.1`` …), its files pushed."""
        uid = update_id or str(uuid.uuid4())
        files = self.world.push(uid, {"m.beam": b"new code"})
        servers = {self.ip(i): [self.server(i, n) for n in range(1, servers_per_ip + 1)] for i in range(1, ips + 1)}
        self.world.allow({"game": servers})
        event = UpdateRequested.model_validate({
            "update_type": "hot_server", "version": VERSION, "ops_manager": OPS, "update_file_list": files,
            "requested_by": "tester", "update_server_list": {"game": servers},
            "erlang_cmd_list": commands if commands is not None else ["c:l(m)"], "rollout": rollout,
        })
        return envelope_of(event, uid), event
