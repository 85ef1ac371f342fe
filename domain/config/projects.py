"""A project's part of the configuration: its areas (the seed's RSYNC_MAP), rsync targets (RSYNC_MANAGERS),
inventory of game servers and CDN dirs, webhooks and what its updates may run."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator

from domain.allowed import DEFAULT_ERLANG_CMD_ALLOWED, check_patterns, command_refusals, describe
from domain.config.base import ConfigModel
from domain.types import (
    AreaCode,
    CdnDir,
    HostName,
    IpAddress,
    ServerGroup,
    ServerName,
    UpdateType,
)


class RsyncTarget(ConfigModel):
    """One entry of the seed's ``RSYNC_MANAGERS``: an rsync daemon module on an ops manager."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="unique within the project")
    area: str = Field(min_length=1, description="area display name (大陆)")
    ip: IpAddress
    port: int = Field(default=873, ge=1, le=65535)
    module: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    user: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    pass_file: Path = Field(description="on the version receiver; must be mode 600")
    ops_manager: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="ops manager behind this module")


class CdnEntry(ConfigModel):
    cdn_root_url: HostName
    cdn_dir: CdnDir


class AreaInventory(ConfigModel):
    """What one area code of a project runs: game servers by group → IP → names, and CDN dirs."""

    servers: dict[ServerGroup, dict[IpAddress, list[ServerName]]] = Field(default_factory=dict)
    cdn: list[CdnEntry] = Field(default_factory=list)


NotificationKind = Literal["completed", "failed", "aborted", "stalled", "progress"]
# A webhook's default kinds; "progress" (each IP finished) is asked for by name (a seed-format webhook does).
NOTIFICATION_KINDS: tuple[NotificationKind, ...] = ("completed", "failed", "aborted", "stalled")


class WebhookConfig(ConfigModel):
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


class ProjectConfig(ConfigModel):
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
