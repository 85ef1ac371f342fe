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

from domain.allowed import DEFAULT_ERLANG_CMD_ALLOWED, check_patterns, command_refusals, describe
from domain.broker_address import parse_broker_address, with_tls_files
from domain.config_consistency import ConfigContradictions, contradictions
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


NotificationKind = Literal["completed", "failed", "aborted", "stalled", "progress"]
# A webhook's default kinds; "progress" (each IP finished) is asked for by name (a seed-format webhook does).
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
    format: Literal["notification", "seed"] = Field(
        default="notification", description="seed: the seed document's per-IP and final callback JSON instead of "
        "a notification, for an old CMDB during a migration (docs/migration.md)",
    )

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
    # --- what an update may run, and the Erlang cookie (domain/allowed.py, docs/deploy.md) ---
    erlang_cmd_allowed: list[str] = Field(
        default_factory=lambda: list(DEFAULT_ERLANG_CMD_ALLOWED),
        description="regular expressions; an Erlang command must match one in full (default: hot loading "
        "of a named module only). Enforced by the CMDB's API and again by the ops executor",
    )
    erlang_cookie_file: Path | None = Field(
        default=None,
        description="file holding the project's Erlang cookie, mode 600; read by an ops manager with a local "
        "runner (an ssh runner's game hosts use their own ~/.erlang.cookie). Never on a command line",
    )

    @model_validator(mode="before")
    @classmethod
    def _no_inline_cookie(cls, data: Any) -> Any:
        if isinstance(data, dict) and "erlang_cookie" in data:
            raise ValueError("erlang_cookie: an inline cookie is no longer read; put it in a file (mode 600) "
                             "named by erlang_cookie_file")
        return data

    @model_validator(mode="after")
    def _commands_allowed(self) -> ProjectConfig:
        check_patterns(self.erlang_cmd_allowed)
        if refused := command_refusals(self.erlang_cmd_list, self.erlang_cmd_allowed):
            raise ValueError(describe(refused))
        return self
    # --- end of the block ---
    webhooks: list[WebhookConfig] = Field(default_factory=list, description="notified by the notifier")
    auto_pull_on_release: bool = Field(
        default=False, description="a release announced by a team's pipeline (release.announced) starts its "
        "pull at once; false: it waits as a pending release until an operator starts it",
    )

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
    https: HttpsFiles | None = Field(default=None, description="serve the API over HTTPS (see dashboard.https)")
    stall_after_seconds: float = Field(
        default=300, gt=0, description="an unfinished update with no event for this long is reported stalled"
    )
    max_body_bytes: int = Field(
        default=4 * 1024 * 1024, ge=1024, description="a request body over this is refused (413) unread"
    )


class ProjectionConfig(_Model):
    database_url: str = "sqlite:///projection.db"
    single_active_consumer: bool = Field(
        default=False,
        description="declare the projection queue single-active-consumer, for two or more projection instances "
        "(one writes, the others wait and take over). Fixed when the queue is first declared (docs/deploy.md)",
    )


class NotifierConfig(_Model):
    state_url: str = Field(default="sqlite:///notifier.db", description="deliveries and their attempts")


class TeamGrant(_Model):
    """Another team's tool: the events it may publish, for which projects (docs/publishing.md)."""

    projects: list[ProjectKey] = Field(min_length=1)
    events: list[str] = Field(min_length=1, description="event names of the catalogue, e.g. release.announced")


class BrokerTls(_Model):
    """TLS to the broker: the files every component uses on its ``amqps://`` URLs (docs/deploy.md).

    The server's certificate and host name are always verified: against ``ca_file``, or the system's
    trusted CAs without it. ``cert_file``/``key_file`` are this machine's client certificate (for brokers
    that require one), so they usually come from ``HOTUPDATE_BROKER_CERT_FILE``/``_KEY_FILE``.
    """

    ca_file: Path | None = Field(default=None, description="PEM CA bundle that signed the broker's certificate")
    cert_file: Path | None = Field(default=None, description="PEM client certificate (with key_file)")
    key_file: Path | None = Field(default=None, description="PEM private key of cert_file; mode 600")

    @model_validator(mode="after")
    def _cert_with_key(self) -> BrokerTls:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self


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
    tls: BrokerTls | None = Field(default=None, description="TLS files for amqps:// URLs")
    quorum_group_size: int | None = Field(
        default=None, ge=1, description="replicas of each quorum queue declared from now on (a cluster: 3); "
        "unset: the broker's default. Fixed when a queue is first declared (docs/deploy.md)",
    )
    delivery_limit: int | None = Field(
        default=None, ge=1, description="deliveries of one message before the broker parks it (unset: 20); "
        "fixed when a queue is first declared, change it on existing queues by policy (docs/deploy.md)",
    )


# --- dashboard: who may read which projects, how they sign in, HTTPS (docs/deploy.md) ---------------

ProjectGrant = ProjectKey | Literal["*"]
"""A project key, or ``*``: every project (auditors)."""


class HttpsFiles(_Model):
    """A certificate chain and its private key (PEM) for serving HTTPS, handed to uvicorn."""

    certfile: Path
    keyfile: Path = Field(description="the private key; keep it mode 600")


class DashboardUser(_Model):
    """A dashboard user: the projects granted directly and through groups, and an API token's hash."""

    projects: list[ProjectGrant] = Field(default_factory=list)
    groups: list[str] = Field(default_factory=list, description="groups of dashboard.groups this user is in")
    token_sha256: str | None = Field(
        default=None, pattern=r"^[0-9a-f]{64}$", description="sha256 hex of the API token (hotupdate cmdb hash-token)"
    )


class OidcConfig(_Model):
    """Single sign-on: OpenID Connect authorization-code flow with PKCE against the company's provider."""

    issuer: str = Field(description="the provider's issuer URL; its /.well-known/openid-configuration is read")
    client_id: str = Field(min_length=1)
    client_secret_file: Path | None = Field(default=None, description="confidential client's secret; none: public")
    scopes: list[str] = Field(default_factory=lambda: ["openid", "profile", "email"])
    username_claim: str = "preferred_username"
    groups_claim: str = Field(default="groups", description="the claim listing the user's groups (dashboard.groups)")
    redirect_uri: str | None = Field(
        default=None, description="https://<dashboard>/auth/callback as registered; default: from the request"
    )


class DashboardConfig(_Model):
    users: dict[str, DashboardUser] = Field(default_factory=dict, description="user name → grants and token")
    groups: dict[str, list[ProjectGrant]] = Field(
        default_factory=dict, description="group (from dashboard.users or the provider's groups claim) → projects"
    )
    oidc: OidcConfig | None = None
    session_secret_file: Path | None = Field(
        default=None, description="key signing session cookies (shared by the workers); none: random per start"
    )
    session_hours: float = Field(default=8, gt=0, le=24 * 30)
    https: HttpsFiles | None = None


class TelemetryConfig(_Model):
    """Where a component serves /metrics, /healthz, /readyz, and where it sends its traces (docs/observability.md)."""

    listen_host: str = Field(default="127.0.0.1", description="address of the consumers' metrics and health listener")
    listen_ports: dict[str, int] = Field(
        default_factory=dict,
        description="service name (file_pull.recv1, ops_executor.ops1, notifier, projection) → port of its "
        "metrics and health listener; a service not named here serves none unless --metrics-port is given",
    )
    traces_endpoint: str | None = Field(
        default=None, pattern=r"^https?://",
        description="OTLP/HTTP traces URL (http://collector:4318/v1/traces); unset: no tracing, no cost",
    )
    traces_sample_ratio: float = Field(
        default=0.1, ge=0, le=1,
        description="share of traces kept, decided where a trace starts (a CMDB request, an event without "
        "traceparent) and followed by every later hop, so an update is traced whole or not at all; 1 traces "
        "every update. OTEL_TRACES_SAMPLER/OTEL_TRACES_SAMPLER_ARG, when set, take precedence",
    )
    metrics_token_sha256: str | None = Field(
        default=None, pattern=r"^[0-9a-f]{64}$",
        description="sha256 hex of the token (hotupdate cmdb hash-token) that lets a scraper on another host "
        "read the CMDB's and the dashboard's /metrics ('Authorization: Bearer <token>'); without it they answer "
        "loopback callers only",
    )


class HotupdateConfig(_Model):
    amqp_url: str = Field(
        default=DEFAULT_AMQP_URL,
        description="the broker: one URL, or several for failover (comma-separated URLs, or a host list "
        "amqps://u:p@mq1,mq2,mq3/vhost; domain/broker_address.py); after loading, amqps:// URLs carry the "
        "files of broker.tls, so every component connects with them",
    )
    broker: BrokerConfig = Field(default_factory=BrokerConfig)
    projects: dict[ProjectKey, ProjectConfig]
    receivers: dict[str, ReceiverConfig] = Field(
        default_factory=dict, description="the seed's PROJECT_CELERY_QUEUE_MAP, now routing-key bindings"
    )
    ops_managers: dict[str, OpsManagerConfig] = Field(default_factory=dict)
    cmdb: CmdbConfig = Field(default_factory=CmdbConfig)
    projection: ProjectionConfig = Field(default_factory=ProjectionConfig)
    notifier: NotifierConfig = Field(default_factory=NotifierConfig)
    dashboard: DashboardConfig = Field(default_factory=DashboardConfig)
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig)

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

    @model_validator(mode="after")
    def _no_contradictions(self) -> HotupdateConfig:
        # After _references_resolve: every name these rules follow is known to exist.
        if problems := contradictions(self):
            raise ConfigContradictions(problems)
        return self

    @model_validator(mode="after")
    def _dashboard_grants_resolve(self) -> HotupdateConfig:
        grants = [(f"dashboard.users.{n}.projects", u.projects) for n, u in self.dashboard.users.items()]
        grants += [(f"dashboard.groups.{n}", projects) for n, projects in self.dashboard.groups.items()]
        for where, projects in grants:
            for project in projects:
                if project != "*" and project not in self.projects:
                    raise ValueError(f"{where}: unknown project {project!r}")
        return self

    @field_validator("amqp_url")
    @classmethod
    def _readable_broker_address(cls, value: str) -> str:
        parse_broker_address(value)
        return value

    @model_validator(mode="after")
    def _broker_tls_needs_amqps(self) -> HotupdateConfig:
        if (tls := self.broker.tls) is not None:
            _fold_broker_tls(self.amqp_url, tls)  # raises when a URL is plain amqp://
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
    if tls_env := _broker_tls_env():
        broker = raw.get("broker") or {}
        if isinstance(broker, dict):  # anything else is reported by the validation
            raw["broker"] = {**broker, "tls": {**(broker.get("tls") or {}), **tls_env}}
    return parse_config(raw, file)


BROKER_TLS_ENV = {
    "ca_file": "HOTUPDATE_BROKER_CA_FILE",
    "cert_file": "HOTUPDATE_BROKER_CERT_FILE",
    "key_file": "HOTUPDATE_BROKER_KEY_FILE",
}


def _broker_tls_env() -> dict[str, str]:
    return {key: value for key, name in BROKER_TLS_ENV.items() if (value := os.environ.get(name))}


def _fold_broker_tls(address: str, tls: BrokerTls) -> str:
    def text(p: Path | None) -> str | None:
        return str(p) if p is not None else None

    return with_tls_files(
        address, ca_file=text(tls.ca_file), cert_file=text(tls.cert_file), key_file=text(tls.key_file)
    )


def broker_address_from_env(address: str) -> str:
    """``address`` (e.g. ``--amqp-url``) with the TLS files of ``HOTUPDATE_BROKER_*_FILE``, for commands
    that run without a configuration file; a ValueError says what is wrong."""
    env = _broker_tls_env()
    parse_broker_address(address)
    return _fold_broker_tls(address, BrokerTls.model_validate(env)) if env else address


def parse_config(raw: dict[str, Any], file: Path) -> HotupdateConfig:
    """Validate an already-parsed mapping; errors name ``file`` and the dotted key."""
    try:
        config = HotupdateConfig.model_validate(raw)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "(top level)"
            cause = err.get("ctx", {}).get("error")
            if not err["loc"] and isinstance(cause, ValueError):
                # Whole-file rules name their own dotted keys, one line each.
                lines += [f"{file}: {line}" for line in str(cause).splitlines()]
            else:
                lines.append(f"{file}: {where}: {err['msg']}")
        raise ConfigError("\n".join(lines)) from None
    return _with_broker_tls(_resolve_paths(config, file.resolve().parent), file.resolve().parent)


def _with_broker_tls(config: HotupdateConfig, base: Path) -> HotupdateConfig:
    """Write the broker.tls files (relative to the config file) into amqp_url, where every component reads it."""
    if config.broker.tls is None:
        return config
    tls = config.broker.tls.model_copy(update={
        key: path if path is None or path.is_absolute() else base / path
        for key, path in (("ca_file", config.broker.tls.ca_file), ("cert_file", config.broker.tls.cert_file),
                          ("key_file", config.broker.tls.key_file))
    })
    return config.model_copy(update={
        "amqp_url": _fold_broker_tls(config.amqp_url, tls),
        "broker": config.broker.model_copy(update={"tls": tls}),
    })


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
                "erlang_cookie_file": fix(p.erlang_cookie_file) if p.erlang_cookie_file else None,
            }
        )
        for k, p in config.projects.items()
    }
    def fix_https(h: HttpsFiles | None) -> HttpsFiles | None:
        return h and HttpsFiles(certfile=fix(h.certfile), keyfile=fix(h.keyfile))

    d = config.dashboard
    dashboard = d.model_copy(update={
        "https": fix_https(d.https),
        "session_secret_file": fix(d.session_secret_file) if d.session_secret_file else None,
        "oidc": d.oidc and d.oidc.model_copy(update={
            "client_secret_file": fix(d.oidc.client_secret_file) if d.oidc.client_secret_file else None}),
    })
    cmdb = config.cmdb.model_copy(update={"https": fix_https(config.cmdb.https)})
    return config.model_copy(update={"receivers": receivers, "ops_managers": managers, "projects": projects,
                                     "dashboard": dashboard, "cmdb": cmdb})
