"""Which long-running services a configuration describes, and so which queues the broker should hold.

The service names are the consumers' queue names without the namespace (``file_pull.recv1``);
``hotupdate status`` and the CMDB's queue gauges read them from here.
"""

from __future__ import annotations

from dataclasses import dataclass

from domain.config import HotupdateConfig


@dataclass(frozen=True)
class ServiceEntry:
    component: str  # file_pull, file_push, ops_executor, notifier, projection, cmdb
    service: str  # the queue's name without the namespace


def configured_services(config: HotupdateConfig) -> list[ServiceEntry]:
    """Every consumer service of ``config``: one per receiver and role, one per ops manager, and the singletons."""
    services = [ServiceEntry("cmdb", "cmdb"), ServiceEntry("projection", "projection")]
    for receiver in config.receivers:
        services += [ServiceEntry(role, f"{role}.{receiver}") for role in ("file_pull", "file_push")]
    services += [ServiceEntry("ops_executor", f"ops_executor.{name}") for name in config.ops_managers]
    if any(project.webhooks for project in config.projects.values()):
        services.append(ServiceEntry("notifier", "notifier"))
    return services
