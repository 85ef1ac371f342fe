"""hotupdate's configuration: one YAML file, validated into these models, loaded once per process.

It generalises the seed's ``rsync.py``: ``RSYNC_MAP`` (area display name → codes per
project and update type), ``RSYNC_MANAGERS`` (rsync targets), ``PROJECT_CELERY_QUEUE_MAP``
(which version receiver serves which projects), plus what the seed kept elsewhere:
version/backup roots, the game-server inventory and the CDN dirs.

Only what differs between machines comes from the environment (``HOTUPDATE_*``):
the broker URL, database URLs, and which machine's part this process plays.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from domain.types import (
    AreaCode,
    CdnDir,
    HostName,
    IpAddress,
    ProjectKey,
    ServerGroup,
    ServerName,
    UpdateType,
)

DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"


class ConfigError(ValueError):
    """The configuration is wrong; the message names the file, the key and the problem."""


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class RsyncTarget(_Model):
    """One entry of the seed's ``RSYNC_MANAGERS``: an rsync daemon module on an ops manager."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="unique within the project")
    area: str = Field(min_length=1, description="area display name (大陆)")
    ip: IpAddress
    port: int = Field(default=873, ge=1, le=65535)
    module: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    user: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    pass_file: Path = Field(description="on the version receiver; must be mode 600")
    ops_manager: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="ops manager behind this module")


class CdnEntry(_Model):
    cdn_root_url: HostName
    cdn_dir: CdnDir


class AreaInventory(_Model):
    """What one area code of a project runs: game servers by group → IP → names, and CDN dirs."""

    servers: dict[ServerGroup, dict[IpAddress, list[ServerName]]] = Field(default_factory=dict)
    cdn: list[CdnEntry] = Field(default_factory=list)


NotificationKind = Literal["completed", "failed", "aborted", "stalled"]
NOTIFICATION_KINDS: tuple[NotificationKind, ...] = ("completed", "failed", "aborted", "stalled")


class WebhookConfig(_Model):
    """A URL the notifier POSTs signed notifications to (see docs/notifications.md)."""

    url: str = Field(max_length=2048, description="http:// or https://; identifies the webhook")
    secret: SecretStr | None = Field(default=None, description="HMAC-SHA256 key (or secret_file)")
    secret_file: Path | None = Field(default=None, description="file holding the key; surrounding whitespace ignored")
    events: list[NotificationKind] = Field(default_factory=lambda: list(NOTIFICATION_KINDS), min_length=1)
    timeout_seconds: float = Field(default=10, gt=0, le=300)
    max_attempts: int = Field(default=8, ge=1, le=100)
    backoff_seconds: float = Field(default=2, gt=0, description="wait before the 2nd attempt; doubles after")
    max_backoff_seconds: float = Field(default=600, gt=0)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        return value

    @model_validator(mode="after")
    def _one_secret(self) -> WebhookConfig:
        if (self.secret is None) == (self.secret_file is None):
            raise ValueError("give exactly one of secret or secret_file")
        if self.secret is not None and len(self.secret.get_secret_value()) < 16:
            raise ValueError("secret: use at least 16 characters")
        return self

    def read_secret(self) -> bytes:
        """The HMAC key: ``secret``, or the stripped contents of ``secret_file`` (OSError if unreadable)."""
        if self.secret is not None:
            return self.secret.get_secret_value().encode("utf-8")
        assert self.secret_file is not None
        return self.secret_file.read_bytes().strip()


class ProjectConfig(_Model):
    display_name: str = ""
    areas: dict[UpdateType, dict[str, list[AreaCode]]] = Field(
        description="the seed's RSYNC_MAP: per update type, area display name → area codes"
    )
    rsync_targets: list[RsyncTarget] = Field(default_factory=list)
    inventory: dict[AreaCode, AreaInventory] = Field(default_factory=dict)
    erlang_cmd_list: list[str] = Field(default_factory=list, description="default commands for hot_server")
    erlang_cookie: str = Field(default="hotupdate", pattern=r"^[A-Za-z0-9_]{1,255}$")
    webhooks: list[WebhookConfig] = Field(default_factory=list, description="notified by the notifier")

    def area_codes(self, update_type: UpdateType, area_name: str) -> list[str]:
        return list(self.areas.get(update_type, {}).get(area_name, []))

    def area_name_of(self, update_type: UpdateType, code: str) -> str | None:
        for name, codes in self.areas.get(update_type, {}).items():
            if code in codes:
                return name
        return None

    @model_validator(mode="after")
    def _targets_unique(self) -> ProjectConfig:
        names = [t.name for t in self.rsync_targets]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"rsync_targets: duplicate name(s) {', '.join(dupes)}")
        urls = [w.url for w in self.webhooks]
        if len(set(urls)) != len(urls):
            raise ValueError("webhooks: the same url is listed twice")
        return self


class ReceiverConfig(_Model):
    """A version receiver (the seed's ``file_push8``): which projects it serves and where files live."""

    projects: list[ProjectKey] = Field(min_length=1)
    version_root: Path = Field(description="holds <server|client>/<project>/<area code>/<version>/reloadfiles")
    backup_root: Path = Field(description="holds hot_<server|client>/<project>/<area code>/<uuid>/<version>")
    rsync_timeout_seconds: float = Field(default=120, gt=0)


class RunnerConfig(_Model):
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
        description="a known_hosts file pinning the game hosts' keys: ssh then refuses any host whose key is "
        "not in it (StrictHostKeyChecking=yes); without it, the ssh user's own known_hosts decides, and an "
        "unknown host is refused all the same (BatchMode never asks)",
    )
    server_root: str = Field(
        default="/data/game/{ip}/{server}",
        description="a server's directory on its host; {ip} and {server} are filled in",
    )
    apply_cmd: list[str] | None = Field(
        default=None, description="default: copy the staged files into <server_root>/ebin"
    )
    erl_cmd: list[str] | None = Field(default=None, description="default: erl_call -sname {server} -c {cookie} -a …")


class OpsManagerConfig(_Model):
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


class Operator(_Model):
    name: str = Field(pattern=r"^[A-Za-z0-9_.@-]{1,64}$")
    token_sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 hex of the bearer token")


class CmdbConfig(_Model):
    database_url: str = "sqlite:///cmdb.db"
    operators: list[Operator] = Field(default_factory=list)
    stall_after_seconds: float = Field(
        default=300, gt=0, description="an unfinished update with no event for this long is reported stalled"
    )


class ProjectionConfig(_Model):
    database_url: str = "sqlite:///projection.db"


class NotifierConfig(_Model):
    state_url: str = Field(default="sqlite:///notifier.db", description="deliveries and their attempts")


class TeamGrant(_Model):
    """Another team's tool: the events it may publish, for which projects (docs/publishing.md)."""

    projects: list[ProjectKey] = Field(min_length=1)
    events: list[str] = Field(min_length=1, description="event names of the catalogue, e.g. release.announced")


class BrokerConfig(_Model):
    """Who logs in to the broker as whom (bus/identity.py derives every permission from this)."""

    shared_user: str | None = Field(
        default=None,
        description="development only: every component logs in as this one user (e.g. guest), so the broker "
        "cannot tell them apart; `config check` warns. In production leave it unset: each component instance "
        "has its own user (hotupdate.<component>[.<instance>]), created by `hotupdate rabbitmq provision`",
    )
    teams: dict[str, TeamGrant] = Field(
        default_factory=dict, description="team name → what its broker user team.<name> may publish"
    )


class HotupdateConfig(_Model):
    amqp_url: str = DEFAULT_AMQP_URL
    broker: BrokerConfig = Field(default_factory=BrokerConfig)
    projects: dict[ProjectKey, ProjectConfig]
    receivers: dict[str, ReceiverConfig] = Field(
        default_factory=dict, description="the seed's PROJECT_CELERY_QUEUE_MAP, now routing-key bindings"
    )
    ops_managers: dict[str, OpsManagerConfig] = Field(default_factory=dict)
    cmdb: CmdbConfig = Field(default_factory=CmdbConfig)
    projection: ProjectionConfig = Field(default_factory=ProjectionConfig)
    notifier: NotifierConfig = Field(default_factory=NotifierConfig)

    @model_validator(mode="after")
    def _references_resolve(self) -> HotupdateConfig:
        for role, table in (("receivers", self.receivers), ("ops_managers", self.ops_managers)):
            for name, machine in table.items():
                for project in machine.projects:
                    if project not in self.projects:
                        raise ValueError(f"{role}.{name}.projects: unknown project {project!r}")
        for team, grant in self.broker.teams.items():
            for project in grant.projects:
                if project not in self.projects:
                    raise ValueError(f"broker.teams.{team}.projects: unknown project {project!r}")
        for key, proj in self.projects.items():
            for target in proj.rsync_targets:
                if target.ops_manager not in self.ops_managers:
                    raise ValueError(
                        f"projects.{key}.rsync_targets.{target.name}.ops_manager: "
                        f"unknown ops manager {target.ops_manager!r}"
                    )
                if not any(target.area in areas for areas in proj.areas.values()):
                    raise ValueError(f"projects.{key}.rsync_targets.{target.name}.area: unknown area {target.area!r}")
        return self

    def project(self, key: str) -> ProjectConfig:
        try:
            return self.projects[key]
        except KeyError:
            raise ConfigError(f"unknown project {key!r} (known: {', '.join(sorted(self.projects))})") from None

    def receiver(self, name: str) -> ReceiverConfig:
        """The version receiver ``name``, or a ConfigError naming the known ones."""
        try:
            return self.receivers[name]
        except KeyError:
            known = ", ".join(sorted(self.receivers)) or "none"
            raise ConfigError(f"receivers.{name}: no such version receiver (known: {known})") from None

    def ops_manager(self, name: str) -> OpsManagerConfig:
        """The ops manager ``name``, or a ConfigError naming the known ones."""
        try:
            return self.ops_managers[name]
        except KeyError:
            known = ", ".join(sorted(self.ops_managers)) or "none"
            raise ConfigError(f"ops_managers.{name}: no such ops manager (known: {known})") from None

    def receiver_for(self, project: str) -> str | None:
        for name, receiver in self.receivers.items():
            if project in receiver.projects:
                return name
        return None


def load_config(path: str | Path | None = None) -> HotupdateConfig:
    """Load and validate the configuration; ``HOTUPDATE_CONFIG`` names the file when ``path`` is None.

    ``HOTUPDATE_AMQP_URL`` overrides ``amqp_url``. Relative paths in the file are taken
    relative to the file's directory, so a config is portable with its tree.
    """
    raw_path = path or os.environ.get("HOTUPDATE_CONFIG")
    if not raw_path:
        raise ConfigError("no configuration file: pass --config or set HOTUPDATE_CONFIG")
    file = Path(raw_path)
    try:
        raw = yaml.safe_load(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{file}: the top level must be a mapping")
    if url := os.environ.get("HOTUPDATE_AMQP_URL"):
        raw["amqp_url"] = url
    return parse_config(raw, file)


def parse_config(raw: dict[str, Any], file: Path) -> HotupdateConfig:
    """Validate an already-parsed mapping; errors name ``file`` and the dotted key."""
    try:
        config = HotupdateConfig.model_validate(raw)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "(top level)"
            lines.append(f"{file}: {where}: {err['msg']}")
        raise ConfigError("\n".join(lines)) from None
    return _resolve_paths(config, file.resolve().parent)


def _resolve_paths(config: HotupdateConfig, base: Path) -> HotupdateConfig:
    def fix(p: Path) -> Path:
        return p if p.is_absolute() else (base / p)

    receivers = {
        n: r.model_copy(update={"version_root": fix(r.version_root), "backup_root": fix(r.backup_root)})
        for n, r in config.receivers.items()
    }
    def fix_runner(r: RunnerConfig) -> RunnerConfig:
        return r.model_copy(update={
            "ssh_key": fix(r.ssh_key) if r.ssh_key else None,
            "ssh_known_hosts": fix(r.ssh_known_hosts) if r.ssh_known_hosts else None,
        })

    managers = {
        n: m.model_copy(update={"incoming_root": fix(m.incoming_root), "cdn_origin_root": fix(m.cdn_origin_root),
                                "runner": fix_runner(m.runner)})
        for n, m in config.ops_managers.items()
    }
    projects = {
        k: p.model_copy(
            update={
                "rsync_targets": [t.model_copy(update={"pass_file": fix(t.pass_file)}) for t in p.rsync_targets],
                "webhooks": [
                    w.model_copy(update={"secret_file": fix(w.secret_file)}) if w.secret_file else w
                    for w in p.webhooks
                ],
            }
        )
        for k, p in config.projects.items()
    }
    return config.model_copy(update={"receivers": receivers, "ops_managers": managers, "projects": projects})
