"""The machines and services of the configuration: version receivers, ops managers (and how they reach
game hosts), the CMDB, the projection and the notifier."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from domain.config.access import HttpsFiles
from domain.config.base import ConfigModel
from domain.types import (
    ProjectKey,
)


class ReceiverConfig(ConfigModel):
    """A version receiver (the seed's ``file_push8``): which projects it serves and where files live."""

    projects: list[ProjectKey] = Field(min_length=1)
    version_root: Path = Field(description="holds <server|client>/<project>/<area code>/<version>/reloadfiles")
    backup_root: Path = Field(description="holds hot_<server|client>/<project>/<area code>/<uuid>/<version>")
    rsync_timeout_seconds: float = Field(default=120, gt=0)


class RunnerConfig(ConfigModel):
    """How an ops manager reaches game-server hosts and what applying files / running a command means.

    Templates are argument lists; ``{placeholders}`` are filled per server from validated values
    and passed as separate arguments, never through a shell.
    """

    kind: Literal["local", "ssh"] = "local"
    ssh_user: str = Field(default="root", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    ssh_key: Path | None = None
    ssh_port: int = Field(default=22, ge=1, le=65535)
    ssh_known_hosts: Path | None = Field(
        default=None,
        description="a known_hosts file pinning the game hosts' keys: any host whose key is not in it is refused; "
        "without it, ~/.ssh/known_hosts of the user running the ops executor decides, and an unknown host is "
        "refused all the same (never trust on first use)",
    )
    # --- the ssh runner's connections (consumers/ops_executor/ssh_runner.py) ---
    ssh_channels_per_host: int = Field(
        default=4, ge=1, le=64,
        description="commands (SSH channels) at once over one game host's connection; OpenSSH's sshd allows "
        "MaxSessions (default 10) per connection",
    )
    ssh_connect_timeout_seconds: float = Field(
        default=10, gt=0, description="a game host that has not completed the SSH login within this is unreachable"
    )
    # --- end of the block ---
    server_root: str = Field(
        default="/data/game/{ip}/{server}",
        description="a server's directory on its host; {ip} and {server} are filled in",
    )
    apply_cmd: list[str] | None = Field(
        default=None, description="default: copy the staged files into <server_root>/ebin"
    )
    erl_cmd: list[str] | None = Field(
        default=None, description="default: erl_call -sname {server} -e (the cookie comes from $HOME/.erlang.cookie)"
    )


class OpsManagerConfig(ConfigModel):
    """An ops manager: the projects it updates, its rsync landing dir and how it runs updates."""

    projects: list[ProjectKey] = Field(min_length=1)
    incoming_root: Path = Field(description="where the rsync daemon module writes pushed files")
    cdn_origin_root: Path = Field(description="a CDN root's origin dir is <cdn_origin_root>/<cdn_root_url>")
    state_url: str = "sqlite:///ops_executor.db"
    concurrency: int = Field(default=16, ge=1, le=1024)
    ip_timeout_seconds: float = Field(default=600, gt=0)
    command_timeout_seconds: float = Field(default=60, gt=0)
    runner: RunnerConfig = Field(default_factory=RunnerConfig)
    purge_cmd: dict[ProjectKey, list[str]] = Field(default_factory=dict)


class Operator(ConfigModel):
    name: str = Field(pattern=r"^[A-Za-z0-9_.@-]{1,64}$")
    token_sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 hex of the bearer token")


class CmdbConfig(ConfigModel):
    database_url: str = "sqlite:///cmdb.db"
    operators: list[Operator] = Field(default_factory=list)
    https: HttpsFiles | None = Field(default=None, description="serve the API over HTTPS (see dashboard.https)")
    stall_after_seconds: float = Field(
        default=300, gt=0, description="an unfinished update with no event for this long is reported stalled"
    )
    max_body_bytes: int = Field(
        default=4 * 1024 * 1024, ge=1024, description="a request body over this is refused (413) unread"
    )


class ProjectionConfig(ConfigModel):
    database_url: str = "sqlite:///projection.db"
    single_active_consumer: bool = Field(
        default=False,
        description="declare the projection queue single-active-consumer, for two or more projection instances "
        "(one writes, the others wait and take over). Fixed when the queue is first declared (docs/deploy.md)",
    )


class NotifierConfig(ConfigModel):
    state_url: str = Field(default="sqlite:///notifier.db", description="deliveries and their attempts")
