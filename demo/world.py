"""Generating the demo's world in a work directory: version tree, secrets, configuration.

Game servers are real Erlang nodes; the local runner maps each "IP" to a directory under
``hosts/``, so the sample IPs (loopback addresses) are never contacted. The update delivers a
new ``role_server.beam``; ``c:l(role_server).`` loads it into each running node.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bus.publisher import broker_login
from demo.erlang import compile_module

PROJECT = "ssss"
AREA_NAME = "大陆"
AREA_CODE = "cn"
SERVER_VERSION = "004200000"
CLIENT_VERSION = "003100000"
MODULE = "role_server"
CDN_ROOT = "res.ssss.chuangyunet.com"
CDN_DIRS = ("t1", "test_r1", "s1", "r1")
# group → IP → servers (the seed's shape); FAILING's files cannot be applied, on purpose
SERVERS: dict[str, dict[str, list[str]]] = {
    "game": {"127.0.0.11": ["qq_1", "qq_2"], "127.0.0.12": ["qq_3", "qq_4"]},
    "cross": {"127.0.0.21": ["cross_1", "cross_2"]},
    "cross_center": {"127.0.0.31": ["center_1"]},
}
FAILING = "qq_4"
NODE_PREFIX = "hud_"  # node names: keep the demo's nodes apart from anything else on the host


@dataclass
class World:
    root: Path
    amqp_url: str
    rsync_port: int
    rsync_password: str
    cookie: str = field(default_factory=lambda: "demo" + secrets.token_hex(8))
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    # Erlang short names are unique per host: a second world (a test beside a demo) needs its own.
    node_prefix: str = field(default_factory=lambda: f"{NODE_PREFIX}{secrets.token_hex(3)}_")
    # group → IP → servers of the inventory: the demo's by default; a test may run a bigger fleet
    servers: dict[str, dict[str, list[str]]] = field(default_factory=lambda: SERVERS)

    def node(self, server: str) -> str:
        """The Erlang node name of a game server of this world."""
        return self.node_prefix + server

    @property
    def config_file(self) -> Path:
        return self.root / "hotupdate.yaml"

    @property
    def cookie_file(self) -> Path:
        return self.root / "secrets" / "erlang.cookie"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def db_url(self, name: str) -> str:
        return f"sqlite:///{self.root / 'db' / (name + '.db')}"

    @property
    def incoming_root(self) -> Path:
        return self.root / "rsyncd" / "module"

    def server_dir(self, ip: str, server: str) -> Path:
        return self.root / "hosts" / ip / server

    def all_servers(self) -> list[tuple[str, str, str]]:
        return [(group, ip, s) for group, ips in self.servers.items() for ip, names in ips.items() for s in names]


def build(world: World) -> None:
    """Write the version tree, the servers' directories with v1 code, secrets and the config file."""
    for sub in ("versions", "backup", "cdn", "hosts", "db", "logs", "secrets"):
        (world.root / sub).mkdir(parents=True, exist_ok=True)
    _server_version(world)
    _client_version(world)
    _servers(world)
    password_file = world.root / "secrets" / "ssss.password"
    password_file.write_text(world.rsync_password + "\n", encoding="utf-8")
    os.chmod(password_file, 0o600)  # rsync (and the seed) insist
    world.cookie_file.write_text(world.cookie + "\n", encoding="ascii")
    os.chmod(world.cookie_file, 0o600)  # the ops executor refuses a cookie others may read
    world.config_file.write_text(
        yaml.safe_dump(config(world, password_file), allow_unicode=True, sort_keys=False), encoding="utf-8"
    )


def _server_version(world: World) -> None:
    # The seed's layout, including its symlinked project directory: server/ssss -> x
    real = world.root / "versions" / "server" / "x" / AREA_CODE / SERVER_VERSION / "reloadfiles"
    real.mkdir(parents=True, exist_ok=True)
    compile_module(MODULE, 2, real)
    (real / "skill_balance.config").write_text("{skill_damage_factor, 1.15}.\n", encoding="utf-8")
    link = world.root / "versions" / "server" / PROJECT
    if not link.is_symlink():
        link.symlink_to("x")


def _client_version(world: World) -> None:
    base = world.root / "versions" / "client" / PROJECT / AREA_CODE / CLIENT_VERSION / "reloadfiles"
    (base / "ui").mkdir(parents=True, exist_ok=True)
    (base / "ui" / "login_bg.png").write_bytes(hashlib.sha256(b"login").digest() * 512)
    (base / "lang_zh_cn.json").write_text('{"welcome": "欢迎回来"}\n', encoding="utf-8")


def _servers(world: World) -> None:
    v1_dir = world.root / "build_v1"
    v1_dir.mkdir(exist_ok=True)
    v1 = compile_module(MODULE, 1, v1_dir)
    for _group, ip, server in world.all_servers():
        home = world.server_dir(ip, server)
        home.mkdir(parents=True, exist_ok=True)
        ebin = home / "ebin"
        code = code_dir(world, ip, server)
        code.mkdir(exist_ok=True)
        shutil.copy2(v1, code / v1.name)
        if server == FAILING:
            # A file where the code directory the update writes to should be: applying files
            # fails here, so the executor must not run this server's Erlang commands (the
            # seed's rule). The node still runs version 1 from its own code directory.
            ebin.write_text("not a directory\n", encoding="utf-8")


def code_dir(world: World, ip: str, server: str) -> Path:
    """Where a server's node loads code from: its ebin, or for the failing one a directory beside it."""
    home = world.server_dir(ip, server)
    return home / ("lib" if server == FAILING else "ebin")


def config(world: World, password_file: Path) -> dict[str, Any]:
    return {
        "amqp_url": world.amqp_url,
        # everything as the URL's user, as in development; `hotupdate demo` gives each its own instead
        "broker": {"shared_user": broker_login(world.amqp_url)},
        "projects": {
            PROJECT: {
                "display_name": "三生三世",
                "areas": {"hot_client": {AREA_NAME: [AREA_CODE]}, "hot_server": {AREA_NAME: [AREA_CODE]}},
                "rsync_targets": [
                    {"name": "ssss_cn", "area": AREA_NAME, "ip": "127.0.0.1", "port": world.rsync_port,
                     "module": "cmdb_hot_server", "user": "cmdb_user", "pass_file": str(password_file),
                     "ops_manager": "ops1"}
                ],
                "inventory": {
                    AREA_CODE: {
                        "servers": world.servers,
                        "cdn": [{"cdn_root_url": CDN_ROOT, "cdn_dir": d} for d in CDN_DIRS],
                    }
                },
                "erlang_cmd_list": [f"c:l({MODULE})."],
                "erlang_cookie_file": str(world.cookie_file),
            }
        },
        "receivers": {
            "recv1": {"projects": [PROJECT], "version_root": str(world.root / "versions"),
                      "backup_root": str(world.root / "backup")}
        },
        "ops_managers": {
            "ops1": {
                "projects": [PROJECT],
                "incoming_root": str(world.incoming_root),
                "cdn_origin_root": str(world.root / "cdn"),
                "state_url": world.db_url("ops1"),
                "concurrency": 4,
                "command_timeout_seconds": 20,
                "runner": {
                    "kind": "local",
                    "server_root": str(world.root / "hosts" / "{ip}" / "{server}"),
                    "erl_cmd": ["erl_call", "-sname", world.node_prefix + "{server}", "-e"],
                },
            }
        },
        "cmdb": {
            "database_url": world.db_url("cmdb"),
            "operators": [{"name": "demo", "token_sha256": hashlib.sha256(world.token.encode()).hexdigest()}],
        },
        "projection": {"database_url": world.db_url("projection")},
        # the dashboard's reader: the operator's token, granted every project (the summary prints how to use it)
        "dashboard": {"users": {"demo": {"projects": ["*"],
                                         "token_sha256": hashlib.sha256(world.token.encode()).hexdigest()}}},
    }
