"""The status view in the database: reading the updates a fold touches, writing what it changed.

:func:`load` reads every row of the given updates into :class:`projections.view.rows.MemoryRows`
(or marks them new); :func:`write` inserts the new rows and updates the changed ones, one
statement per table (an executemany of plain tuples, or a COPY on PostgreSQL). The live
ingest and the rebuild both go through here.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Connection, DateTime, bindparam, select
from sqlalchemy import update as sql_update
from sqlalchemy.orm import Session

from projections.models import VIEW_TABLES, UpdateRow, as_utc
from projections.view.bulk_insert import insert_rows
from projections.view.rows import COLUMNS, KEY_COLUMNS, MODELS, Changes, MemoryRows

_IN_CHUNK = 500  # ids per IN (...) list: well under every database's bound-parameter limit
_TIMES = {model: [c.name for c in model.__table__.columns if isinstance(c.type, DateTime)] for model in MODELS}
_JSON_MODELS = frozenset(m for m in MODELS if any(isinstance(c.type, JSON) for c in m.__table__.columns))
"""Tables with JSON columns: their values need SQLAlchemy's JSON serialisation, so no COPY for them."""


def load(connection: Connection, rows: MemoryRows, updateids: Iterable[str]) -> None:
    """Hold every row of each of ``updateids`` not held yet: read from the database, or new if it has none."""
    wanted = [u for u in dict.fromkeys(updateids) if u not in rows.updates]
    updates: Any = UpdateRow.__table__
    for start in range(0, len(wanted), _IN_CHUNK):
        chunk = wanted[start:start + _IN_CHUNK]
        present = list(connection.execute(select(updates.c.updateid).where(updates.c.updateid.in_(chunk))).scalars())
        for updateid in chunk:
            rows.new_update(updateid)
        if not present:
            continue
        for model in MODELS:
            table = model.__table__
            times = _TIMES[model]
            for values in connection.execute(select(table).where(table.c.updateid.in_(present))).mappings():
                row = dict(values)
                for name in times:  # aware UTC, as the reducers set them: equal values compare equal
                    if isinstance(row[name], datetime):
                        row[name] = as_utc(row[name])
                rows.load(model, row)


_UPDATES: dict[type[Any], Any] = {}


def _update_statement(model: type[Any]) -> Any:
    """UPDATE of every non-key column by primary key, for executemany (bind names prefixed: SQLAlchemy
    reserves the column names for its own parameters)."""
    if model not in _UPDATES:
        table = model.__table__
        keys = KEY_COLUMNS[model]
        _UPDATES[model] = (
            sql_update(table)
            .where(*(table.c[k] == bindparam(f"k_{k}") for k in keys))
            .values({c.name: bindparam(f"v_{c.name}") for c in table.columns if c.name not in keys})
        )
    return _UPDATES[model]


def write(connection: Connection, changes: Changes) -> None:
    """Insert the new rows and update the changed ones."""
    for model, values in changes.new.items():
        if connection.dialect.name == "postgresql" and model not in _JSON_MODELS:
            _copy_rows(connection, model.__table__.name, COLUMNS[model], values)
        else:
            insert_rows(connection, model.__table__, values)
    for model, params in changes.changed.items():
        connection.execute(_update_statement(model), params)


def _copy_rows(connection: Connection, table: str, names: list[str], rows: list[tuple[Any, ...]]) -> None:
    """INSERT ``rows`` with one PostgreSQL COPY, in the connection's transaction.

    As an executemany, each row was a statement of its own through the driver's pipeline: a third
    of the ingest's time on PostgreSQL. psycopg adapts the values as it would for the INSERT.
    """
    columns = ", ".join(f'"{n}"' for n in names)
    driver: Any = connection.connection.driver_connection
    with driver.cursor() as cursor, cursor.copy(f'COPY "{table}" ({columns}) FROM STDIN') as copy:
        for row in rows:
            copy.write_row(row)


def snapshot(session: Session) -> dict[str, list[dict[str, Any]]]:
    """Every status view row as plain values, sorted by primary key: two equal views give equal snapshots."""
    out: dict[str, list[dict[str, Any]]] = {}
    for model in VIEW_TABLES:
        table = model.__table__
        rows = session.execute(select(table).order_by(*table.primary_key.columns)).mappings().all()
        out[table.name] = [
            {k: as_utc(v) if isinstance(v, datetime) else v for k, v in row.items()} for row in rows
        ]
    return out
