"""The import layers hold: each package imports only the floors below it, and only bus/ knows AMQP.

Floors, bottom up: domain (values, config, database) → bus.contract (the events and their envelope, no
transport) → the rest of bus (AMQP transport and the handler API) → the components (producers/cmdb, consumers/*,
projections) → cli and demo, which compose them. A component never imports another component.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FLOORS = {"domain": 0, "bus.contract": 1, "bus": 2, "producers": 3, "consumers": 3, "projections": 3,
          "cli": 4, "demo": 4}
AMQP_LIBRARIES = {"pika", "aio_pika", "aiormq", "pamqp"}


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def _floor(module: str) -> int | None:
    """The floor of ``module``: its longest prefix among FLOORS (bus.contract before bus)."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if (prefix := ".".join(parts[:n])) in FLOORS:
            return FLOORS[prefix]
    return None


def _component(module: str) -> str:
    """The unit a component is: producers.cmdb, consumers.<name>, projections."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] in ("producers", "consumers") else parts[0]


SOURCES = [p for top in FLOORS if "." not in top
           for p in sorted((ROOT / top).rglob("*.py")) if "migrations" not in p.parts]


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_a_module_imports_no_floor_above_its_own_and_no_other_component(path: Path) -> None:
    own = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    floor = _floor(own)
    assert floor is not None
    for imported in _imports(path):
        if imported.split(".")[0] in AMQP_LIBRARIES:
            assert own.startswith("bus.") and floor == FLOORS["bus"], f"{own} imports {imported}: only bus/ knows AMQP"
        theirs = _floor(imported)
        if theirs is None:
            continue
        assert theirs <= floor, f"{own} imports {imported}, a floor above its own"
        if theirs == floor == 3:
            assert _component(imported) == _component(own), f"{own} imports another component: {imported}"


def test_the_check_sees_the_tree() -> None:
    assert len(SOURCES) > 100
    assert any(p.parts[-3:] == ("bus", "contract", "events.py") for p in SOURCES)
