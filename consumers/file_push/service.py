"""file_push's composition root: the consumer service of one version receiver, built from config."""

from __future__ import annotations

from bus.consumer import ConsumerService
from bus.idempotency import ProcessedStore
from bus.identity import identity_from_config
from bus.topology import ServiceQueue, Topology, binding, topology_for
from bus.wiring import bind_handlers
from consumers.file_push.handlers import HANDLERS, PushSettings
from domain.config import HotupdateConfig

ROLE = "file_push"


def push_settings(config: HotupdateConfig, receiver_name: str, *, rsync: str = "rsync") -> PushSettings:
    """The handler's view of the configuration: this receiver and only the projects it serves."""
    receiver = config.receiver(receiver_name)
    return PushSettings(
        receiver=receiver, projects={p: config.projects[p] for p in receiver.projects}, rsync=rsync
    )


def build_service(
    config: HotupdateConfig,
    receiver_name: str,
    *,
    processed_url: str | None = None,
    topology: Topology | None = None,
    prefetch: int = 4,
) -> ConsumerService:
    """The file_push consumer of ``receiver_name``, bound only to the projects that receiver serves."""
    settings = push_settings(config, receiver_name)
    service = f"{ROLE}.{receiver_name}"
    return ConsumerService(
        amqp_url=config.amqp_url,
        topology=topology or topology_for(config),
        queue=ServiceQueue(
            service=service,
            bindings=tuple(binding(kind, project=p) for p in settings.receiver.projects for kind in HANDLERS),
        ),
        handlers=bind_handlers(HANDLERS, {"settings": settings}),
        source=f"hotupdate/{ROLE}/{receiver_name}",
        processed=ProcessedStore(processed_url, service) if processed_url else None,
        prefetch=prefetch,
        identity=identity_from_config(config),
    )
