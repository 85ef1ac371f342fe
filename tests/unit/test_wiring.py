"""bus.wiring: handlers are bound to their dependencies by parameter name, checked at start-up."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from bus.wiring import bind_handlers, inject
from consumers.file_pull.handlers import HANDLERS as FILE_PULL
from consumers.file_push.handlers import HANDLERS as FILE_PUSH
from consumers.notifier.handlers import HANDLERS as NOTIFIER
from consumers.ops_executor.handlers import HANDLERS as OPS_EXECUTOR
from producers.cmdb.process_manager import HANDLERS as CMDB


async def _handle(msg: Any, emit: Any, *, store: list[Any], label: str = "default") -> None:
    store.append((msg, emit, label))


def test_inject_binds_each_named_dependency_and_leaves_the_call_arguments():
    store: list[Any] = []
    handler = inject(_handle, {"store": store, "unused": object()})
    asyncio.run(handler("the event", "the emitter"))
    assert store == [("the event", "the emitter", "default")]


def test_inject_overrides_a_default_when_the_dependency_is_given():
    store: list[Any] = []
    asyncio.run(inject(_handle, {"store": store, "label": "given"})("m", "e"))
    assert store == [("m", "e", "given")]


def test_a_missing_dependency_fails_at_binding_naming_it():
    with pytest.raises(TypeError, match="_handle needs store"):
        inject(_handle, {"label": "x"})


def test_a_call_argument_is_never_injected():
    store: list[Any] = []
    # A dependency that happens to be called "msg" must not shadow the delivered event.
    asyncio.run(inject(_handle, {"store": store, "msg": "wrong"})("right", "e"))
    assert store[0][0] == "right"


@pytest.mark.parametrize(("table", "dependencies"), [
    (FILE_PULL, {"receiver"}),
    (FILE_PUSH, {"settings"}),
    (NOTIFIER, {"book", "store", "dispatcher"}),
    (OPS_EXECUTOR, {"executor", "emitter_for"}),
    (CMDB, {"database", "config"}),
], ids=["file_pull", "file_push", "notifier", "ops_executor", "cmdb"])
def test_each_consumers_table_binds_with_exactly_what_its_composition_root_gives(table, dependencies):
    sentinels = {name: object() for name in dependencies}
    bound = bind_handlers(table, sentinels)
    assert set(bound) == set(table)
    for name in dependencies:
        # Each dependency the root builds is needed by at least one handler: none is built in vain.
        assert any(name in b.keywords for b in bound.values()), name
    for missing in dependencies:
        with pytest.raises(TypeError, match=missing):
            bind_handlers(table, {n: v for n, v in sentinels.items() if n != missing})
