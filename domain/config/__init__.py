"""hotupdate's configuration: one YAML file, validated into these models, loaded once per process.

It generalises the seed's ``rsync.py``: ``RSYNC_MAP`` (area display name → codes per
project and update type), ``RSYNC_MANAGERS`` (rsync targets), ``PROJECT_CELERY_QUEUE_MAP``
(which version receiver serves which projects), plus what the seed kept elsewhere:
version/backup roots, the game-server inventory and the CDN dirs.

Only what differs between machines comes from the environment (``HOTUPDATE_*``):
the broker URL, database URLs, and which machine's part this process plays.

Import from here (``from domain.config import HotupdateConfig``); the modules are its rooms, read in
this order: ``base`` (what every model shares), ``projects``, ``machines``, ``access``, ``root`` (the
whole, and the rules across its parts), ``loading`` (file, environment, paths).
"""

from domain.config.access import (
    BrokerConfig,
    BrokerTls,
    DashboardConfig,
    DashboardUser,
    HttpsFiles,
    OidcConfig,
    ProjectGrant,
    TeamGrant,
    TelemetryConfig,
    fold_broker_tls,
)
from domain.config.base import DEFAULT_AMQP_URL, ConfigError, ConfigModel
from domain.config.loading import BROKER_TLS_ENV, broker_address_from_env, load_config, parse_config
from domain.config.machines import (
    CmdbConfig,
    NotifierConfig,
    Operator,
    OpsManagerConfig,
    ProjectionConfig,
    ReceiverConfig,
    RunnerConfig,
)
from domain.config.projects import (
    NOTIFICATION_KINDS,
    AreaInventory,
    CdnEntry,
    NotificationKind,
    ProjectConfig,
    RsyncTarget,
    WebhookConfig,
)
from domain.config.root import HotupdateConfig

__all__ = [
    "BROKER_TLS_ENV",
    "DEFAULT_AMQP_URL",
    "NOTIFICATION_KINDS",
    "AreaInventory",
    "BrokerConfig",
    "BrokerTls",
    "CdnEntry",
    "CmdbConfig",
    "ConfigError",
    "ConfigModel",
    "DashboardConfig",
    "DashboardUser",
    "HotupdateConfig",
    "HttpsFiles",
    "NotificationKind",
    "NotifierConfig",
    "OidcConfig",
    "Operator",
    "OpsManagerConfig",
    "ProjectConfig",
    "ProjectGrant",
    "ProjectionConfig",
    "ReceiverConfig",
    "RsyncTarget",
    "RunnerConfig",
    "TeamGrant",
    "TelemetryConfig",
    "WebhookConfig",
    "broker_address_from_env",
    "fold_broker_tls",
    "load_config",
    "parse_config",
]
