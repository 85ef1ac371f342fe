"""Many rows into one table, fast: one executemany of plain tuples on the DBAPI cursor.

SQLAlchemy's executemany of dicts runs each value through its bind processor and builds each
row's parameters in Python: for the thousands of rows a batch or a replay window creates (an
*update requested* names every game server), that was ≈ 15 % of the projection's ingest. Here
the same processors are applied by hand (a time shared by many rows is formatted once), so the
stored form is the one SQLAlchemy would have written, and the statement is built once per
dialect and table.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Boolean, Connection, DateTime, insert

_MARKS = {"qmark": "?", "format": "%s", "pyformat": "%s"}
_StatementCache = dict[tuple[str, str], tuple[str, list[tuple[int, Callable[[Any], Any], bool]]]]
_STATEMENTS: _StatementCache = {}


def insert_rows(connection: Connection, table: Any, rows: Sequence[Sequence[Any]], *, stored: bool = False) -> None:
    """INSERT ``rows`` (values in column order) with one executemany of tuples on the DBAPI cursor.

    Values go through the column types' bind processors (as SQLAlchemy would pass them), so the
    stored form is the one the ORM writes and reads back (``stored``: they are in that form already).
    Dialects with another paramstyle take the Core path.
    """
    if not rows:
        return
    dialect = connection.dialect
    mark = _MARKS.get(dialect.paramstyle)
    if mark is None:
        names = [c.name for c in table.columns]
        connection.execute(insert(table), [dict(zip(names, row, strict=True)) for row in rows])
        return
    key = (dialect.name, table.name)
    if key not in _STATEMENTS:
        quote = dialect.identifier_preparer.quote
        columns = list(table.columns)
        # names from the table's own metadata, quoted; the values are bound
        listed, marks = ", ".join(quote(c.name) for c in columns), ", ".join(mark for _ in columns)
        sql = f"INSERT INTO {quote(table.name)} ({listed}) VALUES ({marks})"  # noqa: S608
        processors: list[tuple[int, Callable[[Any], Any], bool]] = [
            (i, p, isinstance(c.type, DateTime)) for i, c in enumerate(columns)
            if (p := c.type.dialect_impl(dialect).bind_processor(dialect)) is not None
            # sqlite3 stores a bool as the integer SQLAlchemy's processor would make of it
            and not (dialect.name == "sqlite" and isinstance(c.type, Boolean))
        ]
        _STATEMENTS[key] = (sql, processors)
    sql, processors = _STATEMENTS[key]
    if stored:
        processors = []
    processed: list[tuple[Any, ...]] = []
    # A window's rows share few times (an event's time goes into all the rows it touches): each is
    # formatted once. Keyed with its zone too, since equal aware times may show different wall clocks.
    formatted: dict[tuple[int, Any, Any], Any] = {}
    for row in rows:
        if processors:
            values = list(row)
            for i, process, is_time in processors:  # None too: as Core does (JSON stores it as 'null')
                value = values[i]
                if is_time and value is not None:
                    memo = (i, value, value.tzinfo)
                    text = formatted.get(memo)
                    if text is None:
                        text = formatted[memo] = process(value)
                    values[i] = text
                else:
                    values[i] = process(value)
            processed.append(tuple(values))
        else:
            processed.append(tuple(row))
    connection.exec_driver_sql(sql, processed)
