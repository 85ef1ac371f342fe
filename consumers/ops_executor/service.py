"""ops_executor's composition root: the executor of one ops manager and its consumer, built from config."""

from __future__ import annotations

import asyncio
import logging

from bus.consumer import ConsumerService, HandlerTable
from bus.contract.envelope import Envelope
from bus.handling import Emitter
from bus.id_keys import id_key_from_url
from bus.idempotency import ProcessedStore
from bus.identity import Identity, identity_from_config
from bus.publisher import AsyncPublisher, ChildEmitter
from bus.topology import ServiceQueue, Topology, binding, topology_for
from bus.wiring import bind_handlers
from consumers.ops_executor.executor import EmitterFor, Executor, make_runner
from consumers.ops_executor.handlers import HANDLERS
from consumers.ops_executor.runner import HostRunner
from consumers.ops_executor.state import StateStore
from consumers.ops_executor.traced_runner import TracedRunner
from domain.config import HotupdateConfig

log = logging.getLogger(__name__)

ROLE = "ops_executor"


def request_emitters(source: str, publisher: AsyncPublisher, id_key: bytes | None = None) -> EmitterFor:
    """Emitters of an update's events as children of its request, through ``publisher``.

    ``id_key``: the consumer's (:attr:`bus.consumer.ConsumerService.id_key`), so an event re-emitted
    on resume gets the id the consumer's own emitter gave it.
    """

    def emitter_for(parent: Envelope) -> Emitter:
        return ChildEmitter(parent, source, publisher, id_key)

    return emitter_for


class OpsExecutorService(ConsumerService):
    """The executor's consumer; on start it also resumes updates a previous process left unfinished,
    and on stop it interrupts running updates at once (they are recorded and resumed later)."""

    def __init__(self, *, executor: Executor, store: StateStore, amqp_url: str, queue: ServiceQueue,
                 handlers: HandlerTable, source: str, resume_publisher: AsyncPublisher,
                 topology: Topology | None = None, processed: ProcessedStore | None = None,
                 prefetch: int = 4, identity: Identity | None = None) -> None:
        super().__init__(amqp_url=amqp_url, queue=queue, handlers=handlers, source=source, topology=topology,
                         processed=processed, prefetch=prefetch, identity=identity)
        self.executor, self.store = executor, store
        # Updates resumed or carried on without their request's delivery publish through this publisher.
        self._resume_publisher = resume_publisher
        self._emitter_for = request_emitters(source, resume_publisher, self.id_key)
        self.resumed: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        await self._resume_publisher.connect()
        await super().start()
        self.resumed = await self.executor.resume_unfinished(self._emitter_for)

    async def stop(self, timeout: float = 60.0) -> None:
        # Stop consuming and interrupt running updates together: an update may take far longer
        # than a shutdown should, and an interrupted one is resumed by the next process.
        stopping = asyncio.create_task(super().stop(timeout))
        await self.executor.interrupt()
        await stopping
        if self.resumed:
            await asyncio.wait(self.resumed, timeout=timeout)
        await self._resume_publisher.close()
        self.store.close()
        self.executor.close()


def build_service(
    config: HotupdateConfig,
    ops_manager: str,
    /,
    *,
    processed_url: str | None = None,
    state_url: str | None = None,
    topology: Topology | None = None,
    runner: HostRunner | None = None,
    prefetch: int = 4,
) -> OpsExecutorService:
    """The ops executor of ``ops_manager``, bound to its projects' *update requested*, *batch confirmed*
    and *update abort requested* events.

    Its state lives at ``state_url`` (default: the config's ``state_url``); handled event ids at
    ``processed_url`` (default: the state database).
    """
    manager = config.ops_manager(ops_manager)
    url = state_url or manager.state_url
    store = StateStore(url)
    executor = Executor(
        ops_manager=ops_manager, config=manager, store=store,
        runner=TracedRunner(runner or make_runner(manager)),  # a span per remote command when tracing
        projects={p: config.project(p) for p in manager.projects},
    )
    service = f"{ROLE}.{ops_manager}"
    source = f"hotupdate/{ROLE}/{ops_manager}"
    topology = topology or topology_for(config)
    publisher = AsyncPublisher(config.amqp_url, topology)
    emitter_for = request_emitters(source, publisher, id_key_from_url(config.amqp_url))
    handlers = bind_handlers(HANDLERS, {"executor": executor, "emitter_for": emitter_for})
    return OpsExecutorService(
        executor=executor,
        store=store,
        amqp_url=config.amqp_url,
        topology=topology,
        queue=ServiceQueue(
            service=service,
            bindings=tuple(binding(kind, project=p) for p in manager.projects for kind in handlers),
        ),
        handlers=handlers,
        source=source,
        resume_publisher=publisher,
        processed=ProcessedStore(processed_url or url, service),
        prefetch=prefetch,
        identity=identity_from_config(config),
    )
