"""Who may do what, and over which transport: broker users and teams, TLS, the dashboard's people and
sign-in, and the telemetry listeners."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from domain.broker_address import with_tls_files
from domain.config.base import ConfigModel
from domain.types import (
    ProjectKey,
)


class TeamGrant(ConfigModel):
    """Another team's tool: the events it may publish, for which projects (docs/publishing.md)."""

    projects: list[ProjectKey] = Field(min_length=1)
    events: list[str] = Field(min_length=1, description="event names of the catalogue, e.g. release.announced")


class BrokerTls(ConfigModel):
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


class BrokerConfig(ConfigModel):
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


class HttpsFiles(ConfigModel):
    """A certificate chain and its private key (PEM) for serving HTTPS, handed to uvicorn."""

    certfile: Path
    keyfile: Path = Field(description="the private key; keep it mode 600")


class DashboardUser(ConfigModel):
    """A dashboard user: the projects granted directly and through groups, and an API token's hash."""

    projects: list[ProjectGrant] = Field(default_factory=list)
    groups: list[str] = Field(default_factory=list, description="groups of dashboard.groups this user is in")
    token_sha256: str | None = Field(
        default=None, pattern=r"^[0-9a-f]{64}$", description="sha256 hex of the API token (hotupdate cmdb hash-token)"
    )


class OidcConfig(ConfigModel):
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


class DashboardConfig(ConfigModel):
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


class TelemetryConfig(ConfigModel):
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
        default=0.02, ge=0, le=1,
        description="share of traces kept on their own, decided where a trace starts (a CMDB request, an event "
        "without traceparent) and followed by every later hop, so an update's request is traced whole or not at "
        "all; a request sent with a sampled traceparent (hotupdate update … --trace) is traced whatever the ratio. "
        "Each 0.01 costs a consumer about 0.45 % of its no-op event rate (BENCHMARKS.md 1b); 1 traces every "
        "request. OTEL_TRACES_SAMPLER/OTEL_TRACES_SAMPLER_ARG, when set, take precedence",
    )
    metrics_token_sha256: str | None = Field(
        default=None, pattern=r"^[0-9a-f]{64}$",
        description="sha256 hex of the token (hotupdate cmdb hash-token) that lets a scraper on another host "
        "read the CMDB's and the dashboard's /metrics ('Authorization: Bearer <token>'); without it they answer "
        "loopback callers only",
    )


def fold_broker_tls(address: str, tls: BrokerTls) -> str:
    """``address`` with the TLS files of ``tls`` in each of its amqps:// URLs; a ValueError for a plain amqp:// one."""
    def text(p: Path | None) -> str | None:
        return str(p) if p is not None else None

    return with_tls_files(
        address, ca_file=text(tls.ca_file), cert_file=text(tls.cert_file), key_file=text(tls.key_file)
    )
