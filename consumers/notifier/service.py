"""The notifier's composition root: webhooks, state, dispatcher and the consumer, built from config."""

from __future__ import annotations

import logging

from bus.consumer import ConsumerService, HandlerTable
from bus.idempotency import ProcessedStore
from bus.identity import Identity, identity_from_config
from bus.topology import ServiceQueue, Topology, binding, topology_for
from bus.wiring import bind_handlers
from consumers.notifier.dispatcher import Dispatcher
from consumers.notifier.handlers import HANDLERS
from consumers.notifier.store import DeliveryStore
from consumers.notifier.triggers import TRIGGERS
from consumers.notifier.webhooks import WebhookBook
from domain.config import ConfigError, HotupdateConfig

log = logging.getLogger(__name__)

ROLE = "notifier"


def service_name(name: str = ROLE) -> str:
    """``notifier`` for the usual one; ``notifier.<name>`` for another (a second environment, say)."""
    return ROLE if name == ROLE else f"{ROLE}.{name}"


def notifier_bindings(config: HotupdateConfig) -> tuple[str, ...]:
    """For each project, the triggering event types one of its webhooks wants a kind of."""
    patterns = []
    for project, project_config in sorted(config.projects.items()):
        wanted = {kind for webhook in project_config.webhooks for kind in webhook.events}
        patterns += [binding(event, project=project) for event, trigger in TRIGGERS.items() if trigger.kinds & wanted]
    return tuple(patterns)


class NotifierService(ConsumerService):
    """The notifier's consumer; on start it first resumes deliveries a previous process left pending."""

    def __init__(self, *, dispatcher: Dispatcher, store: DeliveryStore, amqp_url: str, queue: ServiceQueue,
                 handlers: HandlerTable, source: str, topology: Topology | None = None,
                 processed: ProcessedStore | None = None, prefetch: int = 10,
                 identity: Identity | None = None) -> None:
        super().__init__(amqp_url=amqp_url, queue=queue, handlers=handlers, source=source, topology=topology,
                         processed=processed, prefetch=prefetch, identity=identity)
        self.dispatcher, self.store = dispatcher, store
        self.resumed = 0

    async def start(self) -> None:
        await self.dispatcher.start()
        self.resumed = await self.dispatcher.resume()
        await super().start()

    async def stop(self, timeout: float = 60.0) -> None:
        # Handlers only write rows, so they finish quickly; deliveries still waiting for a
        # retry are cancelled and stay pending for the next start.
        await super().stop(timeout)
        await self.dispatcher.stop()
        self.store.close()


def build_service(
    config: HotupdateConfig,
    name: str = ROLE,
    /,
    *,
    processed_url: str | None = None,
    state_url: str | None = None,
    topology: Topology | None = None,
    prefetch: int = 10,
) -> NotifierService:
    """The notifier, bound to the triggering events of every project with webhooks.

    Deliveries live at ``state_url`` (default: the config's ``notifier.state_url``). A
    ``processed_url`` adds the runtime's handled-event store; the deliveries table alone
    already makes a redelivered event harmless.
    """
    bindings = notifier_bindings(config)
    if not bindings:
        raise ConfigError("no project has webhooks: the notifier would have nothing to do")
    book = WebhookBook.from_config(config)
    store = DeliveryStore(state_url or config.notifier.state_url)
    dispatcher = Dispatcher(store, book)
    service = service_name(name)
    return NotifierService(
        dispatcher=dispatcher,
        store=store,
        amqp_url=config.amqp_url,
        topology=topology or topology_for(config),
        queue=ServiceQueue(service=service, bindings=bindings),
        handlers=bind_handlers(HANDLERS, {"book": book, "store": store, "dispatcher": dispatcher}),
        source=f"hotupdate/{service}",
        processed=ProcessedStore(processed_url, service) if processed_url else None,
        prefetch=prefetch,
        identity=identity_from_config(config),
    )
