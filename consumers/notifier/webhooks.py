"""The configured webhooks of every project, with their secrets read once at start-up."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from domain.config import ConfigError, HotupdateConfig, NotificationKind, WebhookConfig

MIN_SECRET_BYTES = 16


def webhook_key(url: str) -> str:
    """A fixed-size key for a webhook URL (the deliveries table is unique on event id and this)."""
    return hashlib.sha256(url.encode("utf-8")).hexdigest()


def redact_url(url: str) -> str:
    """Scheme, host and port only, plus a short key: many webhook URLs carry their token in the path."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}/… #{webhook_key(url)[:8]}"


@dataclass(frozen=True)
class Endpoint:
    """One project's webhook, ready to call."""

    project: str
    config: WebhookConfig
    secret: bytes

    @property
    def url(self) -> str:
        return self.config.url

    @property
    def label(self) -> str:
        return redact_url(self.config.url)

    def wants(self, kind: NotificationKind) -> bool:
        return kind in self.config.events


class WebhookBook:
    """Every project's endpoints, looked up by project (to notify) or by project and URL (to resume)."""

    def __init__(self, endpoints: Iterable[Endpoint]) -> None:
        self._by_project: dict[str, list[Endpoint]] = {}
        for endpoint in endpoints:
            self._by_project.setdefault(endpoint.project, []).append(endpoint)

    @classmethod
    def from_config(cls, config: HotupdateConfig) -> WebhookBook:
        """Read every secret now, so a missing or short secret file stops the notifier at start-up."""
        endpoints = []
        for project, project_config in config.projects.items():
            for index, webhook in enumerate(project_config.webhooks):
                where = f"projects.{project}.webhooks.{index}"
                try:
                    secret = webhook.read_secret()
                except OSError as exc:
                    raise ConfigError(
                        f"{where}.secret_file: cannot read {webhook.secret_file}: {exc.strerror}"
                    ) from None
                if len(secret) < MIN_SECRET_BYTES:
                    raise ConfigError(f"{where}: the secret must be at least {MIN_SECRET_BYTES} bytes")
                endpoints.append(Endpoint(project, webhook, secret))
        return cls(endpoints)

    def projects(self) -> list[str]:
        return sorted(self._by_project)

    def for_project(self, project: str) -> list[Endpoint]:
        return list(self._by_project.get(project, []))

    def find(self, project: str, url: str) -> Endpoint | None:
        return next((e for e in self._by_project.get(project, []) if e.url == url), None)
