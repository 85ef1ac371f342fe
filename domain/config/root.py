"""The whole configuration (:class:`HotupdateConfig`) and the rules that span its parts."""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from domain.broker_address import parse_broker_address
from domain.config.access import BrokerConfig, DashboardConfig, TelemetryConfig, fold_broker_tls
from domain.config.base import DEFAULT_AMQP_URL, ConfigError, ConfigModel
from domain.config.machines import CmdbConfig, NotifierConfig, OpsManagerConfig, ProjectionConfig, ReceiverConfig
from domain.config.projects import ProjectConfig
from domain.config_consistency import ConfigContradictions, contradictions
from domain.types import (
    ProjectKey,
)


class HotupdateConfig(ConfigModel):
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
            fold_broker_tls(self.amqp_url, tls)  # raises when a URL is plain amqp://
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
