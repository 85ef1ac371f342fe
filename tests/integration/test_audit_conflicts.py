"""Conflicts are never silent, and ids cannot be squatted, on a real broker (issue 15).

A second event under a known id with other content is parked as ``conflict:`` by the
projection (which compares with its log) and by any consumer with an idempotency store, and
listed as a conflict on the dashboard's rejected page; the same event again stays a harmless
duplicate. A decoy published first under the id anyone could derive from a parent id does not
make the real child event be dropped, since real children are keyed by their emitter's login.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from sqlalchemy.orm import Session

from bus.consumer import ConsumerService
from bus.contract.envelope import derived_event_id
from bus.contract.events import UpdateRequested, UpdateStarted
from bus.handling import Emitter, Incoming
from bus.idempotency import ProcessedStore
from bus.redelivery import REASON_HEADER
from bus.topology import ServiceQueue, Topology, binding, declare_all
from cli.main import main as hotupdate
from domain.db import make_engine
from projections import detail, queries
from projections.models import LoggedEvent
from projections.service import SERVICE, build_service, run
from tests.broker_users import broker_users, publish_as
from tests.busprobe import Probe
from tests.projection_support import hot_server_flow

pytestmark = [pytest.mark.rabbit]

DELAYS = (100,)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'projection.db'}"
    return request.getfixturevalue("postgres_url")


async def _until(check, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {timeout}s: {value!r}")
        await asyncio.sleep(0.1)


async def test_the_projection_records_the_publisher_and_parks_a_conflicting_id_as_a_conflict(
        amqp_url, broker, database_url):
    user = f"hotupdate.cmdb.audit{uuid.uuid4().hex[:8]}"
    mallory = f"team.mallory{uuid.uuid4().hex[:8]}"
    await declare_all(amqp_url, Topology(), [ServiceQueue(service=SERVICE, bindings=("#",), retry_delays_ms=DELAYS)])
    consumer, projection = build_service(amqp_url=amqp_url, database_url=database_url, retry_delays_ms=DELAYS)
    stop = asyncio.Event()
    task = asyncio.create_task(run(consumer, projection, stop))
    engine = make_engine(database_url)
    request, _ = hot_server_flow()[0]
    decoy = request.model_copy(update={"data": {**request.data, "requested_by": "mallory"}})
    try:
        with broker_users(broker, amqp_url, user, mallory) as urls:
            async with Probe(amqp_url) as parked:
                await parked.watch(Topology().parking_queue(SERVICE))
                await publish_as(urls[user], user, request)
                await publish_as(urls[user], user, request)  # a redelivery: the same fact again
                await publish_as(urls[mallory], mallory, decoy)
                (message,) = await parked.wait_for(1)
                reason = str((message.headers or {})[REASON_HEADER])
                assert reason.startswith("conflict:") and user in reason and mallory in reason

                def rejected():
                    with Session(engine) as session:
                        return queries.list_rejected(session).items

                (listed,) = await _until(rejected)
                assert listed.conflict and listed.event_id == request.id and listed.reason.startswith("conflict:")
                await asyncio.sleep(0.5)
                assert len(parked.messages) == 1  # the duplicate was not parked
        with Session(engine) as session:
            logged = session.query(LoggedEvent).filter(LoggedEvent.event_id == request.id).one()
            assert logged.publisher == user  # the first, real one stands, with who published it
            assert '"requested_by":"alice"' in logged.envelope
            found = detail.update_detail(session, request.updateid)
            assert found is not None and [e.publisher for e in found.events] == [user]
            assert found.rejected and found.rejected[0].conflict
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        engine.dispose()


async def test_a_consumer_parks_a_redelivered_id_with_other_content_and_takes_the_same_one_once(
        amqp_url, broker, tmp_path, capsys):
    handled: list[str] = []

    async def handle(msg: Incoming[UpdateRequested], emit: Emitter) -> None:
        handled.append(msg.envelope.data["requested_by"])

    service = ConsumerService(
        amqp_url=amqp_url, queue=ServiceQueue(service="audit.dedupe", bindings=(binding(UpdateRequested),),
                                              retry_delays_ms=DELAYS),
        handlers={UpdateRequested: handle}, source="hotupdate/test", prefetch=1,
        processed=ProcessedStore(f"sqlite:///{tmp_path / 'processed.db'}", "audit.dedupe"),
    )
    request = next(env for env, _ in hot_server_flow() if env.type == UpdateRequested.type_name())
    decoy = request.model_copy(update={"data": {**request.data, "requested_by": "mallory"}})
    user, mallory = f"hotupdate.cmdb.audit{uuid.uuid4().hex[:8]}", f"team.mallory{uuid.uuid4().hex[:8]}"
    await service.start()
    try:
        with broker_users(broker, amqp_url, user, mallory) as urls:
            await publish_as(urls[user], user, request)
            await _until(lambda: handled)
            await publish_as(urls[user], user, request)  # the same fact again: a harmless duplicate
            await publish_as(urls[mallory], mallory, decoy)
            await _until(lambda: service.parked == 1)
            await asyncio.sleep(0.5)
            assert handled == [request.data["requested_by"]] and service.parked == 1
    finally:
        await service.stop()
    capsys.readouterr()
    assert await asyncio.to_thread(hotupdate, ["parked", "list", service.name, "--amqp-url", amqp_url]) == 0
    out = capsys.readouterr().out
    assert "conflict: event id" in out and mallory in out and "1 parked message(s)" in out
    assert "1 of them conflicts" in out


async def test_a_decoy_under_a_predicted_child_id_does_not_make_the_real_child_be_dropped(
        amqp_url, broker, tmp_path):
    """The executor's *update started* answers a request; a decoy under the id anyone could derive comes first."""
    seen: list[tuple[str, str]] = []

    async def execute(msg: Incoming[UpdateRequested], emit: Emitter) -> None:
        await emit.emit(UpdateStarted(update_type="hot_server", version=msg.event.version, ops_manager="ops1"))

    async def downstream(msg: Incoming[UpdateStarted], emit: Emitter) -> None:
        seen.append((msg.envelope.id, msg.publisher))

    executor = ConsumerService(
        amqp_url=amqp_url, queue=ServiceQueue(service="audit.executor", bindings=(binding(UpdateRequested),)),
        handlers={UpdateRequested: execute}, source="hotupdate/ops_executor/ops1",
    )
    watcher = ConsumerService(
        amqp_url=amqp_url, queue=ServiceQueue(service="audit.watcher", bindings=(binding(UpdateStarted),)),
        handlers={UpdateStarted: downstream}, source="hotupdate/test",
        processed=ProcessedStore(f"sqlite:///{tmp_path / 'processed.db'}", "audit.watcher"),
    )
    request = next(env for env, _ in hot_server_flow() if env.type == UpdateRequested.type_name())
    predicted = derived_event_id(request.id, UpdateStarted.type_name())  # from the request id on the dashboard
    decoy = request.model_copy(update={
        "id": predicted, "type": UpdateStarted.type_name(), "causationid": request.id, "sequence": request.sequence + 1,
        "data": {"update_type": "hot_server", "version": request.data["version"], "ops_manager": "ops9"},
    })
    mallory = f"team.mallory{uuid.uuid4().hex[:8]}"
    await watcher.start()
    try:
        with broker_users(broker, amqp_url, mallory) as urls:
            await publish_as(urls[mallory], mallory, decoy)  # first
            await _until(lambda: seen)
            await executor.start()
            async with Probe(amqp_url) as probe:
                await probe.publish_raw(request.to_bytes(), request.routing_key, message_id=request.id)
            await _until(lambda: len(seen) == 2)
    finally:
        await executor.stop()
        await watcher.stop()
    (decoy_id, decoy_by), (real_id, _real_by) = seen
    assert (decoy_id, decoy_by) == (predicted, mallory)
    assert real_id != predicted  # keyed by the executor's login: the decoy could not take its place
    assert real_id == derived_event_id(request.id, UpdateStarted.type_name(), secret=executor.id_key)
