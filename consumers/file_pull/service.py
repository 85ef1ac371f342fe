"""file_pull's composition root: the consumer service of one version receiver, built from config."""

from __future__ import annotations

from functools import partial
from typing import cast

from bus.consumer import ConsumerService
from bus.events import PullRequested
from bus.handling import Handler
from bus.idempotency import ProcessedStore
from bus.identity import identity_from_config
from bus.topology import ServiceQueue, Topology, binding, topology_for
from consumers.file_pull.handlers import handle_pull_requested
from domain.config import HotupdateConfig

ROLE = "file_pull"


def build_service(
    config: HotupdateConfig,
    receiver_name: str,
    *,
    processed_url: str | None = None,
    topology: Topology | None = None,
    prefetch: int = 4,
) -> ConsumerService:
    """The file_pull consumer of ``receiver_name``, bound only to the projects that receiver serves."""
    receiver = config.receiver(receiver_name)
    service = f"{ROLE}.{receiver_name}"
    # The handler is typed for its own event; the table's Handler type is the common denominator.
    handler = cast(Handler, partial(handle_pull_requested, receiver=receiver))
    return ConsumerService(
        amqp_url=config.amqp_url,
        topology=topology or topology_for(config),
        queue=ServiceQueue(
            service=service, bindings=tuple(binding(PullRequested, project=p) for p in receiver.projects)
        ),
        handlers={PullRequested: handler},
        source=f"hotupdate/{ROLE}/{receiver_name}",
        processed=ProcessedStore(processed_url, service) if processed_url else None,
        prefetch=prefetch,
        identity=identity_from_config(config),
    )
