"""The rows the reducers fold events into: one update's view rows, held in memory.

The reducers (:mod:`projections.view.reducers`) see only :class:`ViewRows`: get a row by key, add
one, get or add an IP's server rows. :class:`MemoryRows` is its one implementation: every row of
each update it holds, as plain objects with the table's columns as attributes (no ORM
bookkeeping: an *update requested* creates a row per game server). Whoever folds fills it first
(:mod:`projections.view.store` reads the updates a batch touches from the database, or marks them
new) and takes :meth:`MemoryRows.changes` afterwards: the rows to insert and the rows to update.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, cast

from projections.models import BatchRow, CdnDirRow, FileRow, IpRow, RsyncTargetRow, ServerRow, UpdateRow

R = TypeVar("R")
Key = tuple[Any, ...]

TARGET_MODELS: tuple[type[Any], ...] = (IpRow, ServerRow, CdnDirRow, RsyncTargetRow, FileRow, BatchRow)
MODELS: tuple[type[Any], ...] = (UpdateRow, *TARGET_MODELS)


def _defaults(model: type[Any]) -> dict[str, Any]:
    """Each column's scalar default (None where it has none), by column name."""
    out = {}
    for column in model.__table__.columns:
        default = column.default
        out[column.key] = default.arg if default is not None and getattr(default, "is_scalar", False) else None
    return out


DEFAULTS = {model: _defaults(model) for model in MODELS}
KEY_COLUMNS = {model: [c.name for c in model.__table__.primary_key.columns] for model in MODELS}
COLUMNS = {model: [c.name for c in model.__table__.columns] for model in MODELS}
_SERVER = {**DEFAULTS[ServerRow], "expected": False, "reported": False}
_VALUES = {model: operator.itemgetter(*COLUMNS[model]) for model in MODELS}
_KEY_INDEXES = {model: {COLUMNS[model].index(k) for k in KEY_COLUMNS[model]} for model in MODELS}


class Row:
    """A view row as a plain object: the table's columns as attributes; ``_stored``, its values as
    written (in column order), or None for a row not written yet."""

    def __init__(self, values: dict[str, Any], stored: tuple[Any, ...] | None = None) -> None:
        self.__dict__ = values
        values["_stored"] = stored


class ViewRows(Protocol):
    """What a reducer may ask of the view's rows (all of them belong to the update being folded)."""

    def get(self, model: type[R], key: Key) -> R | None: ...

    def add(self, model: type[R], key: Key, **values: Any) -> R: ...

    def servers(self, updateid: str, ip: str, names: Iterable[str]) -> list[ServerRow]: ...

    def ip_servers(self, updateid: str, ip: str) -> Iterable[ServerRow]: ...


@dataclass
class UpdateRows:
    """All of one update's rows: by model, by key; its server rows also by IP."""

    tables: dict[type[Any], dict[Key, Any]] = field(default_factory=lambda: {m: {} for m in MODELS})
    servers_by_ip: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class Changes:
    """What folding changed: new rows (values in column order) and changed rows (UPDATE parameters), by model."""

    new: dict[type[Any], list[tuple[Any, ...]]] = field(default_factory=dict)
    changed: dict[type[Any], list[dict[str, Any]]] = field(default_factory=dict)


class MemoryRows:
    """:class:`ViewRows` in memory. An update it does not hold is taken as new: a caller folding into a
    database's view holds the updates the database has first (:func:`projections.view.store.load`)."""

    def __init__(self) -> None:
        self.updates: dict[str, UpdateRows] = {}
        self.touched: dict[str, None] = {}
        """The updates folded into since the last :meth:`changes`, in first-touched order."""

    def new_update(self, updateid: str) -> None:
        """Hold ``updateid`` as an update with no rows yet."""
        self.updates[updateid] = UpdateRows()

    def load(self, model: type[Any], values: dict[str, Any]) -> None:
        """Hold a row as stored."""
        key = tuple(values[name] for name in KEY_COLUMNS[model])
        self._keep(model, key, Row(values, tuple(values[name] for name in COLUMNS[model])))

    def _keep(self, model: type[Any], key: Key, row: Any) -> Any:
        rows = self.updates.setdefault(key[0], UpdateRows())  # one not held is new: the caller loads the others
        rows.tables[model][key] = row
        if model is ServerRow:
            rows.servers_by_ip.setdefault(key[1], {})[key[2]] = row
        return row

    def get(self, model: type[R], key: Key) -> R | None:
        held = self.updates.get(key[0])
        return None if held is None else held.tables[model].get(key)

    def add(self, model: type[R], key: Key, **values: Any) -> R:
        return self._keep(model, key, Row({**DEFAULTS[model], **values}))  # type: ignore[no-any-return]

    def servers(self, updateid: str, ip: str, names: Iterable[str]) -> list[ServerRow]:
        # per server, a call of get and add would cost more than the work: an update request names thousands
        rows = self.updates[updateid]
        by_ip = rows.servers_by_ip.setdefault(ip, {})
        table = rows.tables[ServerRow]
        out: list[Any] = []
        for name in names:
            row = by_ip.get(name)
            if row is None:
                row = by_ip[name] = table[(updateid, ip, name)] = Row(
                    {**_SERVER, "updateid": updateid, "ip": ip, "server": name})
            out.append(row)
        return out

    def ip_servers(self, updateid: str, ip: str) -> Iterable[ServerRow]:
        return cast(Iterable[ServerRow], self.updates[updateid].servers_by_ip.get(ip, {}).values())

    def rows_of(self, updateid: str) -> UpdateRows:
        return self.updates[updateid]

    def changes(self) -> Changes:
        """The touched updates' rows that are new or changed since held or last taken; from here on they
        count as written."""
        out = Changes()
        for updateid in self.touched:
            for model, rows in self.updates[updateid].tables.items():
                values = _VALUES[model]
                keys = _KEY_INDEXES[model]
                names = COLUMNS[model]
                for row in rows.values():
                    now = row.__dict__
                    current = values(now)
                    stored = now["_stored"]
                    if stored is None:
                        out.new.setdefault(model, []).append(current)
                    elif current != stored:
                        out.changed.setdefault(model, []).append(
                            {(f"k_{n}" if i in keys else f"v_{n}"): v
                             for i, (n, v) in enumerate(zip(names, current, strict=True))})
                    else:
                        continue
                    now["_stored"] = current
        self.touched = {}
        return out

    def keep_only(self, updateids: Iterable[str]) -> None:
        """Let go of every update but ``updateids`` (a rebuild keeps those still in progress)."""
        wanted = set(updateids)
        self.updates = {u: rows for u, rows in self.updates.items() if u in wanted}
