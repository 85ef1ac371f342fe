"""One way to wire a consumer: a table of plain handler functions, bound to their dependencies by name.

Each consumer's handlers module ends with one table, ``HANDLERS = {EventType: handle_it, …}``; its
composition root calls :func:`bind_handlers` with the dependencies it built (``executor=…``,
``settings=…``). A handler names what it needs as parameters after ``msg`` and ``emit``, so the
signature is the whole contract, and a missing dependency fails at start-up, not on the first
delivery (cosmicpython's ``bootstrap.inject_dependencies``).
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import Any, TypeVar

from bus.contract.events import Event
from bus.handling import Handler

T = TypeVar("T")

# The call's own arguments, never injected: the delivered event and the emitter for its children.
CALL_ARGUMENTS = ("msg", "emit")

Handlers = Mapping[type[Event], Callable[..., Awaitable[None]]]
"""A handlers module's table: each function typed for its own event, not yet bound."""


def inject(handler: Callable[..., T], dependencies: Mapping[str, Any]) -> partial[T]:
    """``handler`` with every parameter but the call's own bound from ``dependencies`` by its name.

    Raises ``TypeError`` naming the parameters no dependency answers (those with defaults excepted).
    """
    params = {name: p for name, p in inspect.signature(handler).parameters.items() if name not in CALL_ARGUMENTS}
    missing = [name for name, p in params.items() if name not in dependencies and p.default is p.empty]
    if missing:
        raise TypeError(f"{handler.__qualname__} needs {', '.join(missing)}: no such dependency was given")
    return partial(handler, **{name: dependencies[name] for name in params if name in dependencies})


def bind_handlers(table: Handlers, dependencies: Mapping[str, Any]) -> dict[type[Event], Handler]:
    """The consumer's handler table: each handler of ``table`` bound by :func:`inject`."""
    return {event: inject(handler, dependencies) for event, handler in table.items()}
