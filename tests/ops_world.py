"""A small ops-manager world on disk for ops_executor tests: config, game-server dirs, pushed files."""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bus.contract.envelope import Envelope
from bus.contract.events import CdnTarget, FileEntry, UpdateRequested
from bus.contract.registry import make_envelope
from domain.allowed import DEFAULT_ERLANG_CMD_ALLOWED
from domain.config import HotupdateConfig
from domain.layout import incoming_dir

PROJECT, AREA, VERSION, OPS = "ssss", "cn", "004200000", "om1"
# Erlang command forms the executor tests use beyond the default hot loading (the project's erlang_cmd_allowed).
SLOW_IF_MARKED = 'case filelib:is_file("slow") of true -> timer:sleep(infinity); false -> ok end'
TEST_COMMAND_FORMS = (r"hu_mod_[0-9a-f]+:bump\(\)", r"timer:sleep\((infinity|[0-9]+)\)", re.escape(SLOW_IF_MARKED),
                      r"sleep:[0-9.]+")


@dataclass
class World:
    root: Path
    suffix: str = field(default_factory=lambda: secrets.token_hex(4))
    ops: dict[str, Any] = field(default_factory=dict)
    # The project's inventory for AREA: what the tests' requests may address (see allow / allow_cdn).
    servers: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    cdn: list[tuple[str, str]] = field(default_factory=list)

    @property
    def cookie(self) -> str:
        return f"cookie_{self.suffix}"

    @property
    def module(self) -> str:
        return f"hu_mod_{self.suffix}"

    @property
    def incoming_root(self) -> Path:
        return self.root / "incoming"

    @property
    def cdn_root(self) -> Path:
        return self.root / "cdn"

    @property
    def state_url(self) -> str:
        return f"sqlite:///{self.root / 'executor.db'}"

    def name(self, base: str) -> str:
        """A server name unique to this run, so parallel runs' Erlang nodes never clash."""
        return f"{base}_{self.suffix}"

    def server_dir(self, ip: str, server: str) -> Path:
        return self.root / "hosts" / ip / server

    @property
    def cookie_file(self) -> Path:
        """The project's Erlang cookie file (mode 600), written on first use."""
        path = self.root / "secrets" / "erlang.cookie"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(self.cookie + "\n")
        return path

    def allow(self, servers: dict[str, dict[str, list[str]]]) -> None:
        """Put these servers (group → IP → names) into the inventory of configs made from now on."""
        for group, ips in servers.items():
            for ip, names in ips.items():
                known = self.servers.setdefault(group, {}).setdefault(ip, [])
                known.extend(n for n in names if n not in known)

    def allow_cdn(self, dirs: list[tuple[str, str]]) -> None:
        """Put these (CDN root, dir) into the inventory of configs made from now on."""
        self.cdn.extend(d for d in dirs if d not in self.cdn)

    def config(self, amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/", **ops: Any) -> HotupdateConfig:
        manager = {
            "projects": [PROJECT],
            "incoming_root": str(self.incoming_root),
            "cdn_origin_root": str(self.cdn_root),
            "state_url": self.state_url,
            "command_timeout_seconds": 20,
            "ip_timeout_seconds": 120,
            "runner": {"kind": "local", "server_root": str(self.root / "hosts" / "{ip}" / "{server}")},
            **self.ops,
            **ops,
        }
        return HotupdateConfig.model_validate({
            "amqp_url": amqp_url,
            "broker": {"shared_user": "guest"},
            "projects": {PROJECT: {
                "areas": {"hot_server": {"大陆": [AREA]}, "hot_client": {"大陆": [AREA]}},
                "erlang_cookie_file": str(self.cookie_file),
                "erlang_cmd_allowed": [*DEFAULT_ERLANG_CMD_ALLOWED, *TEST_COMMAND_FORMS],
                # Until a test allows its own targets, a placeholder no request names: an area's inventory
                # may not be empty (domain/config_consistency.py).
                "inventory": {AREA: {
                    "servers": self.servers or {"game": {"127.0.0.254": ["placeholder_1"]}},
                    "cdn": [{"cdn_root_url": u, "cdn_dir": d}
                            for u, d in self.cdn or [("res.placeholder.example", "placeholder")]]}},
            }},
            "ops_managers": {OPS: manager},
        })

    def push(self, update_id: str, files: dict[str, bytes]) -> list[FileEntry]:
        """Put files where rsync would have delivered them; returns the update's file list."""
        directory = incoming_dir(self.incoming_root, PROJECT, AREA, update_id, VERSION)
        entries = []
        for name, content in files.items():
            path = directory / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
            entries.append(FileEntry(file_name=name, file_md5=hashlib.md5(content).hexdigest(), size=len(content)))
        return entries


def hot_server_request(world: World, update_id: str, files: list[FileEntry],
                       servers: dict[str, dict[str, list[str]]], commands: list[str]
                       ) -> tuple[Envelope, UpdateRequested]:
    """A hot_server request; its servers join ``world``'s inventory (for configs made afterwards)."""
    world.allow(servers)
    event = UpdateRequested.model_validate({
        "update_type": "hot_server", "version": VERSION, "ops_manager": OPS, "update_file_list": files,
        "requested_by": "tester", "update_server_list": servers, "erlang_cmd_list": commands,
    })
    return envelope_of(event, update_id), event


def hot_client_request(world: World, update_id: str, files: list[FileEntry], dirs: list[tuple[str, str]]
                       ) -> tuple[Envelope, UpdateRequested]:
    """A hot_client request; its CDN dirs join ``world``'s inventory (for configs made afterwards)."""
    world.allow_cdn(dirs)
    event = UpdateRequested(
        update_type="hot_client", version=VERSION, ops_manager=OPS, update_file_list=files,
        requested_by="tester", client_type=0,
        data=[CdnTarget(cdn_root_url=url, cdn_dir=d) for url, d in dirs],
    )
    return envelope_of(event, update_id), event


def envelope_of(event: UpdateRequested, update_id: str) -> Envelope:
    return make_envelope(event, source="hotupdate/cmdb", updateid=update_id, project=PROJECT, area=AREA,
                         sequence=10)
