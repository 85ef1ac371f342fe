"""The status view: one reducer per event type, dispatched by :data:`REDUCERS` at the bottom.

Every reducer is order-independent, so the view does not depend on arrival order:

- a stage's time is the earliest event time seen for it, and the stage and status are
  derived from which stage times are present (:func:`derive_stage`), not from the last event;
- a target's result, or a group of update fields, is overwritten only by an event later in
  the update's causal order (:func:`order_key`: sequence, then event time, then id);
- sets (expected IPs, files, rsync targets) only grow, and counts are recomputed from the
  target rows after every event (:func:`refresh`).

So an *IP finished* before *update started* gives the same view as the other way round,
and a replay of the log in any order rebuilds the same view. Duplicates never get here:
:mod:`projections.ingest` applies each event id once.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import operator
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

from pydantic import ValidationError
from sqlalchemy import JSON, ColumnElement, String, and_, bindparam, case, func, select
from sqlalchemy import update as sql_update
from sqlalchemy.orm import Session

from bus.envelope import Envelope
from bus.events import (
    AnalysisVerdict,
    BatchConfirmed,
    BatchFinished,
    CdnDirFinished,
    CdnTarget,
    Event,
    FileEntry,
    FilesPulled,
    FilesPushed,
    IpFinished,
    PullFailed,
    PullRequested,
    PushFailed,
    PushRequested,
    ReleaseAnnounced,
    RsyncTargetResult,
    UpdateAbortRequested,
    UpdateCompleted,
    UpdateRequested,
    UpdateStalled,
    UpdateStarted,
)
from domain.types import SERVER_GROUPS
from projections import view_counts
from projections.bulk_insert import insert_rows
from projections.models import (
    VIEW_TABLES,
    BatchRow,
    CdnDirRow,
    FileRow,
    IpRow,
    RsyncTargetRow,
    ServerRow,
    UpdateRow,
    as_utc,
)

Reducer = Callable[[Session, UpdateRow, Envelope, Any], None]
R = TypeVar("R")


class ViewLimitError(ValueError):
    """A value is too long for the view's key columns (the event stays in the log, unapplied)."""


# --- stages -------------------------------------------------------------------------

STAGE_FIELDS: tuple[tuple[str, str, str], ...] = (
    # (stage, timestamp column, label) in the order a hot update goes through them
    ("pull_requested", "pull_requested_at", "files requested"),
    ("pulled", "pulled_at", "files pulled"),
    ("pull_failed", "pull_failed_at", "pull failed"),
    ("push_requested", "push_requested_at", "push requested"),
    ("pushed", "pushed_at", "files pushed"),
    ("push_failed", "push_failed_at", "push failed"),
    ("update_requested", "update_requested_at", "update requested"),
    ("started", "started_at", "update started"),
    ("abort_requested", "abort_requested_at", "abort requested"),
    ("completed", "completed_at", "completed"),
)
# The furthest stage present wins; at one step a success outranks a failure (a retried push).
_PRECEDENCE = (
    "completed", "started", "update_requested", "pushed", "push_failed", "push_requested",
    "pulled", "pull_failed", "pull_requested",
)
_TIMESTAMP = {stage: column for stage, column, _ in STAGE_FIELDS}
# Steps shown only when they happened (the others are shown as still to come).
OPTIONAL_STAGES = ("pull_failed", "push_failed", "abort_requested")
STATUSES = ("in_progress", "awaiting_confirm", "stalled", "succeeded", "failed", "stopped", "aborted")


def derive_stage(update: UpdateRow, *, results_reported: bool) -> tuple[str, str]:
    """(stage, status) from which stage timestamps are present; results imply the update started.

    Status: a completed update's outcome; else failed at a failed pull or push; else waiting
    for an operator's go-ahead; else stalled if a stall report is newer than its last progress.
    """
    present = {stage for stage in _PRECEDENCE if getattr(update, _TIMESTAMP[stage]) is not None}
    if results_reported:
        present.add("started")
    stage = next((s for s in _PRECEDENCE if s in present), "unknown")
    if stage == "unknown" and RELEASE_GROUP in (update.winners or {}):
        stage = "release_announced"  # a team's release waiting for its pull (auto or an operator's)
    stalled_at, progress_at = as_utc(update.stalled_at), as_utc(update.last_progress_at)
    if stage == "completed":
        status = update.outcome or ("succeeded" if update.final_result else "failed")
    elif stage in ("pull_failed", "push_failed"):
        status = "failed"
    elif update.awaiting_batch is not None:
        status = "awaiting_confirm"
    elif stalled_at is not None and (progress_at is None or stalled_at > progress_at):
        status = "stalled"
    else:
        status = "in_progress"
    return stage, status


# --- ordering and small helpers -----------------------------------------------------


def order_key(envelope: Envelope, rank: int = 0) -> str:
    """A string that sorts events of one update by (rank, sequence, time, id): later wins."""
    return f"{rank}|{_stamp(envelope)[2]}"


def _when(envelope: Envelope) -> datetime:
    """The event's time in UTC (SQLite stores wall-clock text: everything stored must be UTC)."""
    return _stamp(envelope)[1]


_Stamp = tuple[Envelope | None, datetime, str]
_last_stamp: _Stamp = (None, datetime.min, "")


def _stamp(envelope: Envelope) -> _Stamp:
    """(envelope, its time in UTC, its order key without the rank), computed once per envelope.

    Applying one event asks for its time about five times and its order key about three (apply,
    the identity, the reducer's groups and rows): the last envelope's are kept, found by identity
    (envelopes are frozen, and the one kept is referenced here, so no other object can be at its
    address). One tuple, read and replaced whole: threads applying events at once at worst recompute.
    """
    global _last_stamp
    last = _last_stamp
    if last[0] is envelope:
        return last
    last = _last_stamp = (
        envelope, _utc(envelope.time), f"{envelope.sequence:019d}|{_utc_text(envelope.time)}|{envelope.id}")
    return last


# Times are cached too, as the last events' times repeat. Aware datetimes are equal exactly when
# they are the same instant, and both results depend on the instant alone.
@functools.lru_cache(maxsize=512)
def _utc(when: datetime) -> datetime:
    return when.astimezone(UTC)


@functools.lru_cache(maxsize=512)
def _utc_text(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")


def _wins(update: UpdateRow, group: str, envelope: Envelope, rank: int = 0) -> bool:
    """Whether ``envelope`` may set the fields of ``group`` (it is not earlier than the one that did)."""
    key = f"{rank}|{_stamp(envelope)[2]}"
    winners = update.winners or {}
    current = winners.get(group)
    if current is not None and current > key:
        return False
    update.winners = {**winners, group: key}  # reassign: JSON columns track assignment
    return True


def _later(current: str | None, key: str) -> bool:
    return current is None or key >= current


def _earliest(current: datetime | None, when: datetime) -> datetime:
    current = as_utc(current)
    return when if current is None or when < current else current


def _latest(current: datetime | None, when: datetime) -> datetime:
    current = as_utc(current)
    return when if current is None or when > current else current


def _text(value: str) -> str:
    """Free text from events, storable anywhere (PostgreSQL text cannot hold NUL)."""
    return value.replace("\x00", "\ufffd") if "\x00" in value else value  # text rarely has one: the test is cheaper


def _fits(value: str, limit: int, what: str) -> str:
    if len(value) > limit:
        raise ViewLimitError(f"{what} is {len(value)} characters; the status view keeps at most {limit}")
    return value


def _identity(update: UpdateRow, envelope: Envelope, update_type: str | None, version: str, rank: int) -> None:
    """update_type/version: the requests are authoritative (higher rank), other events fill in."""
    if _wins(update, "identity", envelope, rank):
        if update_type is not None:
            update.update_type = update_type
        update.version = version


# --- target rows --------------------------------------------------------------------


ROW_CACHE = "projections.view.rows"
"""``session.info`` key of the transaction's :class:`RowCache`, when the caller installed one."""


class RowCache:
    """The view rows a transaction has read or added, so a batch reads each row at most once.

    Without it every target row is a ``session.get``, and a miss is a SELECT that first
    flushes the session (autoflush): per server of an update request, per server of an
    *IP finished*. With it, rows are loaded a *scope* at a time (all of an update's rows of
    a table, or of one IP's servers) with autoflush off, and rows added since are found
    here; a key absent from a loaded scope is known to be absent. An update that is not in
    the database has no target rows either (reducers create both in one step), so a new
    update's scopes are all known to be empty.

    Install it only where the whole transaction is either kept or rolled back as one
    (a savepoint rolled back under it would leave rows here that are gone from the session).
    """

    def __init__(self, *, plain_updates: bool = False) -> None:
        # plain_updates: new update rows are plain NewRows too (the caller derives and writes them itself)
        self.plain_updates = plain_updates
        self.rows: dict[type[Any], dict[tuple[Any, ...], Any]] = {}
        self.scopes: set[tuple[type[Any], tuple[str, ...]]] = set()
        # the server rows of rows again, by (updateid, ip) and server (remember keeps both)
        self.servers_by_ip: dict[tuple[str, str], dict[str, ServerRow]] = {}
        self.new: dict[type[Any], list[NewRow]] = {}
        self.loaded_rows: dict[type[Any], list[LoadedRow]] = {}

    def remember_loaded(self, model: type[Any], values: dict[str, Any]) -> None:
        """Keep a row read from the database (unless the batch holds that row already)."""
        key = tuple(values[c.name] for c in model.__table__.primary_key.columns)
        if key in self.rows.get(model, {}):
            return
        row = LoadedRow(values)
        self.loaded_rows.setdefault(model, []).append(row)
        self.remember(model, key, row)

    def remember(self, model: type[Any], key: tuple[Any, ...], row: Any) -> Any:
        row = self.rows.setdefault(model, {}).setdefault(key, row)
        if model is ServerRow:
            self.servers_by_ip.setdefault((key[0], key[1]), {}).setdefault(key[2], row)
        return row

    def loaded(self, model: type[Any], scope: tuple[str, ...]) -> bool:
        return (model, scope[:1]) in self.scopes or (model, scope) in self.scopes


_TARGET_MODELS: tuple[type[Any], ...] = (IpRow, ServerRow, CdnDirRow, RsyncTargetRow, FileRow, BatchRow)


class NewRow:
    """A target row first created in this batch, as a plain object with the table's columns as attributes.

    The reducers only read and set attributes, so they cannot tell it from a mapped row; it skips
    the ORM's per-object bookkeeping, which for the rows an update request creates (one per game
    server) cost more than everything else. :func:`write_new_rows` inserts them, one multi-row
    INSERT per table.
    """

    def __init__(self, defaults: dict[str, Any], values: dict[str, Any]) -> None:
        self.__dict__ = {**defaults, **values}  # one new dict: cheaper than updating the instance's twice


_DEFAULTS: dict[type[Any], dict[str, Any]] = {}


def _column_defaults(model: type[Any]) -> dict[str, Any]:
    """Each column's scalar default (None where it has none), by column name; computed once per model."""
    if model in _DEFAULTS:
        return _DEFAULTS[model]
    out = {}
    for column in model.__table__.columns:
        default = column.default
        out[column.key] = default.arg if default is not None and getattr(default, "is_scalar", False) else None
    _DEFAULTS[model] = out
    return out


_SERVER_DEFAULTS = {**_column_defaults(ServerRow), "expected": False, "reported": False}
"""A new server row's values but its key, as :func:`_server_row` creates it (for :func:`_server_rows`)."""


class LoadedRow(NewRow):
    """A target row read from the database in this batch (plain, like :class:`NewRow`), and its values as read."""

    def __init__(self, values: dict[str, Any]) -> None:
        super().__init__({}, values)
        self.__dict__["_as_read"] = dict(values)


_UPDATES: dict[type[Any], Any] = {}


def update_statement(model: type[Any]) -> Any:
    """UPDATE of every non-key column by primary key, for executemany (bind names prefixed: SQLAlchemy
    reserves the column names for its own parameters)."""
    if model not in _UPDATES:
        table = model.__table__
        keys = {c.name for c in table.primary_key.columns}
        _UPDATES[model] = (
            sql_update(table)
            .where(*(table.c[k] == bindparam(f"k_{k}") for k in sorted(keys)))
            .values({c.name: bindparam(f"v_{c.name}") for c in table.columns if c.name not in keys})
        )
    return _UPDATES[model]


def write_new_rows(session: Session) -> None:
    """Flush the session, then write the batch's plain rows: INSERT the :class:`NewRow` ones, UPDATE
    the :class:`LoadedRow` ones that changed (needed before counting them in SQL)."""
    session.flush()
    cache: RowCache | None = session.info.get(ROW_CACHE)
    if cache is None:
        return
    connection = session.connection()
    for model, rows in cache.new.items():
        names = list(_column_defaults(model))
        if not rows:
            continue
        if connection.dialect.name == "postgresql" and model not in _JSON_MODELS:
            _copy_rows(connection, model.__table__.name, names, rows)
        else:
            insert_rows(connection, model.__table__, new_row_values(model, rows))
    cache.new = {}
    write_changed_rows(connection, cache)


def new_row_values(model: type[Any], rows: Iterable[NewRow]) -> list[tuple[Any, ...]]:
    """``rows``' values in the table's column order (a NewRow's ``__dict__`` holds every column, by key)."""
    values = operator.itemgetter(*(c.key for c in model.__table__.columns))
    return [values(row.__dict__) for row in rows]


_JSON_MODELS = frozenset(m for m in (ServerRow, IpRow, CdnDirRow, FileRow, RsyncTargetRow, BatchRow, UpdateRow)
                         if any(isinstance(c.type, JSON) for c in m.__table__.columns))
"""Tables with JSON columns: their values need SQLAlchemy's JSON serialisation, so no COPY for them."""


def _copy_rows(connection: Any, table: str, names: list[str], rows: list[Any]) -> None:
    """INSERT ``rows`` with one PostgreSQL COPY, in the connection's transaction.

    A batch creates thousands of target rows (an *update requested* names every server); as an
    executemany, each row was a statement of its own through the driver's pipeline, a third of
    the ingest's time on PostgreSQL. psycopg adapts the values (text, booleans, aware datetimes,
    integers) as it would for the INSERT.
    """
    columns = ", ".join(f'"{n}"' for n in names)
    with connection.connection.driver_connection.cursor() as cursor, \
            cursor.copy(f'COPY "{table}" ({columns}) FROM STDIN') as copy:
        for row in rows:
            values = row.__dict__
            copy.write_row([values[n] for n in names])


def write_changed_rows(connection: Any, cache: RowCache) -> None:
    """UPDATE the cache's :class:`LoadedRow` rows that changed since read (or since last written)."""
    for model, params in changed_rows(cache).items():
        connection.execute(update_statement(model), params)


def changed_rows(cache: RowCache) -> dict[type[Any], list[dict[str, Any]]]:
    """:func:`update_statement` parameters of the cache's :class:`LoadedRow` rows that changed since
    read or last written, by model; they count as written from here on."""
    out: dict[type[Any], list[dict[str, Any]]] = {}
    for model, loaded in cache.loaded_rows.items():
        table = model.__table__
        keys = {c.name for c in table.primary_key.columns}
        for row in loaded:
            now = {c.name: row.__dict__[c.name] for c in table.columns}
            if now != row.__dict__["_as_read"]:
                out.setdefault(model, []).append({(f"k_{n}" if n in keys else f"v_{n}"): v for n, v in now.items()})
                row.__dict__["_as_read"] = now
    return out


def _load_scope(session: Session, cache: RowCache, model: type[Any], scope: tuple[str, ...]) -> None:
    table = model.__table__
    columns = (table.c.updateid, table.c.ip) if len(scope) == 2 else (table.c.updateid,)
    # Core, not the ORM: the rows become plain LoadedRows (no autoflush: the batch's rows are in the cache)
    query = select(table).where(*(c == v for c, v in zip(columns, scope, strict=True)))
    for values in session.connection().execute(query).mappings():
        cache.remember_loaded(model, dict(values))
    cache.scopes.add((model, scope))


def prefetch_updates(session: Session, updateids: Iterable[str]) -> None:
    """Read the update rows of a batch in one query (a no-op without a :class:`RowCache`)."""
    cache: RowCache | None = session.info.get(ROW_CACHE)
    wanted = [u for u in dict.fromkeys(updateids) if not cache or not cache.loaded(UpdateRow, (u,))]
    if cache is None or not wanted:
        return
    with session.no_autoflush:
        for start in range(0, len(wanted), 500):
            chunk = wanted[start:start + 500]
            for row in session.scalars(select(UpdateRow).where(UpdateRow.updateid.in_(chunk))):
                cache.remember(UpdateRow, (row.updateid,), row)
            for updateid in chunk:
                cache.scopes.add((UpdateRow, (updateid,)))
                if (updateid,) not in cache.rows.get(UpdateRow, {}):  # a new update has no target rows yet
                    cache.scopes.update((model, (updateid,)) for model in _TARGET_MODELS)


def load_update(session: Session, updateid: str) -> None:
    """Read all of an update's view rows into the :class:`RowCache` (which must be installed)."""
    cache: RowCache = session.info[ROW_CACHE]
    models: tuple[type[Any], ...] = (UpdateRow, *_TARGET_MODELS)
    for model in models:
        if not cache.loaded(model, (updateid,)):
            _load_scope(session, cache, model, (updateid,))


def mark_new_update(session: Session, updateid: str) -> None:
    """Tell the :class:`RowCache` that an update has no rows in the database (so none are read)."""
    cache: RowCache = session.info[ROW_CACHE]
    models: tuple[type[Any], ...] = (UpdateRow, *_TARGET_MODELS)
    cache.scopes.update((model, (updateid,)) for model in models)


def prefetch_servers(session: Session, events: Iterable[Event], envelopes: Iterable[Envelope]) -> None:
    """Read the server rows the batch's *IP finished* events will touch, one query per update
    (a no-op without a :class:`RowCache`)."""
    cache: RowCache | None = session.info.get(ROW_CACHE)
    if cache is None:
        return
    wanted: dict[str, dict[str, None]] = {}
    for event, envelope in zip(events, envelopes, strict=True):
        if (isinstance(event, IpFinished) and len(event.ip) <= 128
                and not cache.loaded(ServerRow, (envelope.updateid, event.ip))):
            wanted.setdefault(envelope.updateid, {})[event.ip] = None
    table = ServerRow.__table__
    connection = session.connection()
    for updateid, ips in wanted.items():
        names = list(ips)
        for start in range(0, len(names), 500):
            chunk = names[start:start + 500]
            query = select(table).where(table.c.updateid == updateid, table.c.ip.in_(chunk))
            for values in connection.execute(query).mappings():
                cache.remember_loaded(ServerRow, dict(values))
            cache.scopes.update((ServerRow, (updateid, ip)) for ip in chunk)


def _get(session: Session, model: type[R], key: tuple[Any, ...], scope: tuple[str, ...]) -> R | None:
    """The row of ``model`` at ``key`` (in ``scope``: its update, or its update and IP), or None."""
    cache: RowCache | None = session.info.get(ROW_CACHE)
    if cache is None:
        return session.get(model, key)
    rows = cache.rows.get(model)
    row = rows.get(key) if rows is not None else None  # a row is never None
    if row is not None:
        return row  # type: ignore[no-any-return]
    if cache.loaded(model, scope):
        return None  # absent from a loaded scope: absent
    _load_scope(session, cache, model, scope)
    return cache.rows.get(model, {}).get(key)


def _add(session: Session, model: type[R], key: tuple[Any, ...], **values: Any) -> R:
    """A new row of ``model``: a mapped one, or with a :class:`RowCache` a :class:`NewRow` (typed as the model)."""
    cache: RowCache | None = session.info.get(ROW_CACHE)
    if cache is None:
        row = model(**values)
        session.add(row)
        return row
    new = NewRow(_column_defaults(model), values)
    cache.new.setdefault(model, []).append(new)
    return cast(R, cache.remember(model, key, new))


def _ip_row(session: Session, updateid: str, ip: str) -> IpRow:
    ip = _fits(ip, 128, "IP")
    row = _get(session, IpRow, (updateid, ip), (updateid,))
    if row is None:
        row = _add(session, IpRow, (updateid, ip), updateid=updateid, ip=ip, expected=False, reported=False,
                   not_run=False, servers_ok=0, servers_failed=0)
    return row


def _server_row(session: Session, updateid: str, ip: str, server: str) -> ServerRow:
    ip = _fits(ip, 128, "IP")
    row = _get(session, ServerRow, (updateid, ip, server), (updateid, ip))
    if row is None:
        row = _add(session, ServerRow, (updateid, ip, server), updateid=updateid, ip=ip, server=server,
                   expected=False, reported=False)
    return row


def _server_rows(session: Session, updateid: str, ip: str, servers: Iterable[str]) -> list[ServerRow]:
    """:func:`_server_row` of each of ``servers`` (in order) of one IP.

    With the IP's scope in the :class:`RowCache` (an update request's, an *IP finished*'s), the rows
    are looked up and added here directly: per server, the calls of :func:`_get` and :func:`_add`
    cost more than the work. They are looked up in the IP's own small dict first: a replay's
    ``rows`` holds hundreds of thousands of server rows, and each lookup there is a cache miss.
    """
    ip = _fits(ip, 128, "IP")
    cache: RowCache | None = session.info.get(ROW_CACHE)
    if cache is None or not cache.loaded(ServerRow, (updateid, ip)):
        return [_server_row(session, updateid, ip, server) for server in servers]
    rows = cache.rows.setdefault(ServerRow, {})
    by_ip = cache.servers_by_ip.get((updateid, ip), {})
    new: list[NewRow] | None = None
    out = []
    for server in servers:
        row = by_ip.get(server)
        if row is None:
            key = (updateid, ip, server)
            row = rows.get(key)
            if row is None:  # absent from a loaded scope: new (as _add, with the same values, and as remember)
                if new is None:
                    new = cache.new.setdefault(ServerRow, [])
                    by_ip = cache.servers_by_ip.setdefault((updateid, ip), {})
                created: Any = NewRow(_SERVER_DEFAULTS, {"updateid": updateid, "ip": ip, "server": server})
                row = rows[key] = created  # a NewRow, typed as the model (as _add's)
                new.append(created)
                by_ip.setdefault(server, created)
        out.append(row)
    return out


def _prefetch_servers(session: Session, updateid: str) -> None:
    """Load all of an update's server rows at once (an update request touches each of them)."""
    cache: RowCache | None = session.info.get(ROW_CACHE)
    if cache is not None and not cache.loaded(ServerRow, (updateid,)):
        _load_scope(session, cache, ServerRow, (updateid,))


def _cdn_row(session: Session, updateid: str, root: str, cdn_dir: str) -> CdnDirRow:
    root = _fits(root, 255, "CDN root URL")
    row = _get(session, CdnDirRow, (updateid, root, cdn_dir), (updateid,))
    if row is None:
        row = _add(session, CdnDirRow, (updateid, root, cdn_dir), updateid=updateid, cdn_root_url=root,
                   cdn_dir=cdn_dir, expected=False)
    return row


def _target_row(session: Session, updateid: str, name: str) -> RsyncTargetRow:
    row = _get(session, RsyncTargetRow, (updateid, name), (updateid,))
    if row is None:
        row = _add(session, RsyncTargetRow, (updateid, name), updateid=updateid, name=name, requested=False)
    return row


def _file(session: Session, updateid: str, entry: FileEntry, envelope: Envelope, rank: int, flag: str) -> None:
    name_key = hashlib.sha256(entry.file_name.encode("utf-8")).hexdigest()
    key = order_key(envelope, rank)
    row = _get(session, FileRow, (updateid, name_key), (updateid,))
    if row is None:
        row = _add(session, FileRow, (updateid, name_key),
                   updateid=updateid, name_key=name_key, file_name=entry.file_name, file_md5=entry.file_md5,
                   size=entry.size, pulled=False, pushed=False, in_update=False, source_key=key)
    elif key >= row.source_key:
        row.file_md5, row.size, row.source_key = entry.file_md5, entry.size, key
    setattr(row, flag, True)


def _target_result(session: Session, updateid: str, result: RsyncTargetResult, envelope: Envelope) -> None:
    row = _target_row(session, updateid, result.name)
    key = order_key(envelope)
    if _later(row.result_key, key):
        row.ip, row.port, row.module, row.user = _fits(result.ip, 128, "IP"), result.port, result.module, result.user
        row.ok, row.bytes, row.seconds = result.ok, result.bytes, result.seconds
        row.error = _text(result.error) or None
        row.reported_at = _when(envelope)
        row.result_key = key


# --- reducers: one per event type -----------------------------------------------------


def on_pull_requested(session: Session, update: UpdateRow, env: Envelope, event: PullRequested) -> None:
    _identity(update, env, event.update_type, event.version, rank=3)
    update.pull_requested_at = _earliest(update.pull_requested_at, _when(env))
    if _wins(update, "pull.requested", env):
        update.area_name = _text(event.area_name)
        if event.client_type is not None:
            update.client_type = event.client_type
        update.pull_requested_by = event.requested_by
        update.pull_requested_source = _text(env.source)


RELEASE_GROUP = "release.announced"


def on_release_announced(session: Session, update: UpdateRow, env: Envelope, event: ReleaseAnnounced) -> None:
    # The update its pull starts takes the announcement's update id: the release is its first stage.
    _identity(update, env, event.update_type, event.version, rank=0)
    _wins(update, RELEASE_GROUP, env)


def on_analysis_verdict(session: Session, update: UpdateRow, env: Envelope, event: AnalysisVerdict) -> None:
    """Logged and counted with the update's events; the executor acts on it, the CMDB shows it."""


def on_files_pulled(session: Session, update: UpdateRow, env: Envelope, event: FilesPulled) -> None:
    _identity(update, env, event.update_type, event.version, rank=1)
    update.pulled_at = _earliest(update.pulled_at, _when(env))
    if _wins(update, "files.pulled", env):
        update.source_dir = _text(event.source_dir)
        update.backup_dir = _text(event.backup_dir)
        update.total_bytes = event.total_bytes
    for entry in event.files:
        _file(session, update.updateid, entry, env, rank=1, flag="pulled")


def on_pull_failed(session: Session, update: UpdateRow, env: Envelope, event: PullFailed) -> None:
    _identity(update, env, event.update_type, event.version, rank=1)
    update.pull_failed_at = _earliest(update.pull_failed_at, _when(env))
    if _wins(update, "pull.failed", env):
        update.pull_failure = _text(f"{event.reason}: {event.detail}")


def on_push_requested(session: Session, update: UpdateRow, env: Envelope, event: PushRequested) -> None:
    _identity(update, env, event.update_type, event.version, rank=4)
    update.push_requested_at = _earliest(update.push_requested_at, _when(env))
    wins = _wins(update, "push.requested", env)
    if wins:
        update.push_requested_by = event.requested_by
    for entry in event.files:
        _file(session, update.updateid, entry, env, rank=2, flag="pushed")
    for target in event.targets:
        row = _target_row(session, update.updateid, target.name)
        row.requested = True
        if wins and row.result_key is None:  # a reported result carries the address it was sent to
            row.ip, row.port = _fits(target.ip, 128, "IP"), target.port
            row.module, row.user = target.module, target.user


def on_files_pushed(session: Session, update: UpdateRow, env: Envelope, event: FilesPushed) -> None:
    _identity(update, env, event.update_type, event.version, rank=1)
    update.pushed_at = _earliest(update.pushed_at, _when(env))
    for result in event.targets:
        _target_result(session, update.updateid, result, env)


def on_push_failed(session: Session, update: UpdateRow, env: Envelope, event: PushFailed) -> None:
    _identity(update, env, event.update_type, event.version, rank=1)
    update.push_failed_at = _earliest(update.push_failed_at, _when(env))
    if _wins(update, "push.failed", env):
        update.push_failure = _text(event.reason)
    reported = set()
    for result in event.targets:
        _target_result(session, update.updateid, result, env)
        reported.add(result.name)
    key = order_key(env)
    for name in event.failed_targets:
        if name in reported or not name or len(name) > 64:
            continue
        row = _target_row(session, update.updateid, _text(name))
        if _later(row.result_key, key):
            row.ok, row.error, row.reported_at, row.result_key = False, "named as failed", _when(env), key


def on_update_requested(session: Session, update: UpdateRow, env: Envelope, event: UpdateRequested) -> None:
    _identity(update, env, event.update_type, event.version, rank=5)
    update.update_requested_at = _earliest(update.update_requested_at, _when(env))
    if _wins(update, "update.requested", env):
        update.ops_manager = event.ops_manager
        update.update_requested_by = event.requested_by
        update.update_requested_source = _text(env.source)
        update.erlang_cmd_list = [_text(c) for c in event.erlang_cmd_list]
        if event.client_type is not None:
            update.client_type = event.client_type
        update.rollout = event.rollout.model_dump(mode="json") if event.rollout else None
        update.parent_updateid, update.relation = event.parent_id, event.relation
    for entry in event.update_file_list:
        _file(session, update.updateid, entry, env, rank=3, flag="in_update")
    if event.update_server_list:
        _prefetch_servers(session, update.updateid)
    for group, hosts in (event.update_server_list or {}).items():
        for ip, servers in hosts.items():
            ip_row = _ip_row(session, update.updateid, ip)
            ip_row.expected = True
            ip_row.group = ip_row.group or group  # what the IP itself reported outranks the request
            for row in _server_rows(session, update.updateid, ip, servers):
                row.expected = True
                row.group = row.group or group
    for target in event.data or []:
        _cdn_row(session, update.updateid, target.cdn_root_url, target.cdn_dir).expected = True


def on_update_started(session: Session, update: UpdateRow, env: Envelope, event: UpdateStarted) -> None:
    _identity(update, env, event.update_type, event.version, rank=2)
    update.started_at = _earliest(update.started_at, _when(env))
    if _wins(update, "update.started", env) and update.ops_manager is None:
        update.ops_manager = event.ops_manager
    for ip in event.ips:
        _ip_row(session, update.updateid, ip).expected = True
    for target in event.cdn_dirs:
        _cdn_row(session, update.updateid, target.cdn_root_url, target.cdn_dir).expected = True


def on_cdn_dir_finished(session: Session, update: UpdateRow, env: Envelope, event: CdnDirFinished) -> None:
    _identity(update, env, None, event.version, rank=1)
    row = _cdn_row(session, update.updateid, event.cdn_root_url, event.cdn_dir)
    key = order_key(env, rank=2)  # the dir's own report outranks the summary in update.completed
    if _later(row.result_key, key):
        row.status, row.data, row.reported_by = event.status, _text(event.data) or None, CdnDirFinished.type_name()
        row.finished_at, row.result_key = _when(env), key


def on_ip_finished(session: Session, update: UpdateRow, env: Envelope, event: IpFinished) -> None:
    _identity(update, env, None, event.version, rank=1)
    key, when = order_key(env), _when(env)
    ip_row = _ip_row(session, update.updateid, event.ip)
    if _later(ip_row.result_key, key):
        ip_row.reported, ip_row.group = True, event.group
        ip_row.finished_at, ip_row.result_key = when, key
    update_data, erl_data, group = event.update_data, event.erl_data, event.group
    # usually both name the same servers: then one sort, no sets
    names = update_data.keys() if update_data.keys() == erl_data.keys() else set(update_data) | set(erl_data)
    servers = sorted(names)
    for server, row in zip(servers, _server_rows(session, update.updateid, event.ip, servers), strict=True):
        result_key = row.result_key
        if result_key is not None and key < result_key:  # not _later(result_key, key)
            continue
        upd, erl = update_data.get(server), erl_data.get(server)
        row.reported, row.group = True, group
        # ok when nothing reported for it failed (the seed: update, then Erlang commands); statuses are bools
        row.ok = (upd is None or upd.status) and (erl is None or erl.status)
        if upd is None:
            row.update_status = row.update_text = None
        else:
            row.update_status, row.update_text = upd.status, _text(upd.data)
        if erl is None:
            row.erl_status = row.erl_text = None
        else:
            row.erl_status, row.erl_text = erl.status, _text(erl.data)
        row.finished_at, row.result_key = when, key
    _refresh_ip(session, ip_row)


def on_update_completed(session: Session, update: UpdateRow, env: Envelope, event: UpdateCompleted) -> None:
    _identity(update, env, event.update_type, event.version, rank=1)
    update.completed_at = _earliest(update.completed_at, _when(env))
    if _wins(update, "update.completed", env):
        update.final_result = event.final_result
        update.final_data = _text(event.final_data)
        update.completed_ok_count = event.ok_count
        update.completed_failed_count = event.failed_count
        update.outcome = event.outcome
        update.not_run = [_text(t) for t in event.not_run]
    for kind, (first, second) in _not_run_targets(event.not_run):
        if kind == "ip":
            _ip_row(session, update.updateid, first).not_run = True
        else:
            _cdn_row(session, update.updateid, first, second).not_run = True
    key = order_key(env, rank=1)
    for target, status, text in _completed_dirs(event.data):
        row = _cdn_row(session, update.updateid, target.cdn_root_url, target.cdn_dir)
        if _later(row.result_key, key):
            row.status, row.data, row.reported_by = status, text, UpdateCompleted.type_name()
            row.finished_at, row.result_key = _when(env), key


def _not_run_targets(names: list[str]) -> list[tuple[str, tuple[str, str]]]:
    """The completion's ``not_run`` names: ``ip``, ``ip/group`` or ``cdn_root_url/cdn_dir``; others are skipped."""
    out: list[tuple[str, tuple[str, str]]] = []
    for name in names:
        left, _, right = name.partition("/")
        if not right or right in SERVER_GROUPS:
            try:
                out.append(("ip", (str(ipaddress.ip_address(left)), "")))
            except ValueError:
                continue
            continue
        try:
            target = CdnTarget.model_validate({"cdn_root_url": left, "cdn_dir": right})
        except ValidationError:
            continue
        out.append(("cdn", (target.cdn_root_url, target.cdn_dir)))
    return out


def _batch_row(session: Session, updateid: str, batch: int) -> BatchRow:
    row = _get(session, BatchRow, (updateid, batch), (updateid,))
    if row is None:
        row = _add(session, BatchRow, (updateid, batch), updateid=updateid, batch=batch)
    return row


def on_batch_finished(session: Session, update: UpdateRow, env: Envelope, event: BatchFinished) -> None:
    row = _batch_row(session, update.updateid, event.batch)
    key = order_key(env)
    if _later(row.result_key, key):
        row.batches, row.next = event.batches, event.next
        row.ok_count, row.failed_count = event.ok_count, event.failed_count
        row.ips = list(event.ips)
        row.cdn_dirs = [f"{t.cdn_root_url}/{t.cdn_dir}" for t in event.cdn_dirs]
        row.finished_at, row.result_key = _when(env), key


def on_batch_confirmed(session: Session, update: UpdateRow, env: Envelope, event: BatchConfirmed) -> None:
    row = _batch_row(session, update.updateid, event.batch)
    key = order_key(env)
    if _later(row.confirm_key, key):
        row.confirmed_by, row.confirmed_at, row.confirm_key = event.confirmed_by, _when(env), key


def on_update_abort_requested(session: Session, update: UpdateRow, env: Envelope, event: UpdateAbortRequested
                              ) -> None:
    update.abort_requested_at = _earliest(update.abort_requested_at, _when(env))
    if _wins(update, "update.abort_requested", env):
        update.abort_requested_by, update.abort_reason = event.requested_by, _text(event.reason) or None


def on_update_stalled(session: Session, update: UpdateRow, env: Envelope, event: UpdateStalled) -> None:
    if _wins(update, "update.stalled", env):  # the latest report says who is still silent
        update.stalled_at = _when(env)
        update.silent_targets = [_text(t) for t in event.silent_targets]
        update.stalled_after_seconds = event.stalled_after_seconds


def _completed_dirs(data: list[dict[str, Any]]) -> list[tuple[CdnTarget, bool, str | None]]:
    """The seed's final hot_client list (``{cdn_root_url, cdn_dir, status}``); malformed entries are skipped."""
    out = []
    for item in data:
        status = item.get("status")
        if not isinstance(status, bool):
            continue
        try:
            target = CdnTarget.model_validate(
                {"cdn_root_url": item.get("cdn_root_url"), "cdn_dir": item.get("cdn_dir")}
            )
        except ValidationError:
            continue
        text = item.get("data")
        out.append((target, status, _text(text) if isinstance(text, str) and text else None))
    return out


REDUCERS: Mapping[type[Event], Reducer] = {
    PullRequested: on_pull_requested,
    FilesPulled: on_files_pulled,
    PullFailed: on_pull_failed,
    PushRequested: on_push_requested,
    FilesPushed: on_files_pushed,
    PushFailed: on_push_failed,
    UpdateRequested: on_update_requested,
    UpdateStarted: on_update_started,
    CdnDirFinished: on_cdn_dir_finished,
    IpFinished: on_ip_finished,
    BatchFinished: on_batch_finished,
    BatchConfirmed: on_batch_confirmed,
    UpdateAbortRequested: on_update_abort_requested,
    UpdateCompleted: on_update_completed,
    UpdateStalled: on_update_stalled,
    ReleaseAnnounced: on_release_announced,
    AnalysisVerdict: on_analysis_verdict,
}
"""Keyed by the newest model of each event: the registry upcasts older versions before they get here."""


# --- applying one event -----------------------------------------------------------------


def apply(session: Session, envelope: Envelope, event: Event, *, derive: bool = True) -> UpdateRow:
    """Fold one event into the status view (the caller makes sure each event id comes once).

    ``derive=False`` leaves the update's counts, stage and status to a later :func:`refresh`
    of it: they are a function of the rows alone, so a replay refreshes each update once
    per batch instead of after every event, and gets the same view.
    """
    update = _get(session, UpdateRow, (envelope.updateid,), (envelope.updateid,))
    if update is None:
        cache: RowCache | None = session.info.get(ROW_CACHE)
        fields: dict[str, Any] = dict(
            updateid=envelope.updateid, project=envelope.project, area=envelope.area, winners={},
            stage="unknown", status="in_progress", first_event_at=_when(envelope), last_event_at=_when(envelope),
            event_count=0, batches_finished=0,
        )
        if cache is not None and cache.plain_updates:
            update = _add(session, UpdateRow, (envelope.updateid,), **fields)
        else:
            # a mapped row even in a batch: refresh writes its counts after the target rows are in
            update = UpdateRow(**fields)
            session.add(update)
        if cache is not None:  # not in the database, so none of its target rows are either
            cache.remember(UpdateRow, (envelope.updateid,), update)
            cache.scopes.update((model, (envelope.updateid,)) for model in _TARGET_MODELS)
    if _wins(update, "scope", envelope):
        update.project, update.area = envelope.project, envelope.area
    reducer = REDUCERS.get(type(event))
    if reducer is not None:  # a type without a reducer is still logged and counted
        reducer(session, update, envelope, event)
    update.event_count = (update.event_count or 0) + 1
    when = _when(envelope)
    update.first_event_at = _earliest(update.first_event_at, when)
    update.last_event_at = _latest(update.last_event_at, when)
    if not isinstance(event, UpdateStalled):  # a stall report is not progress
        update.last_progress_at = _latest(update.last_progress_at, when)
    if derive:
        refresh(session, update)
    return update


def _count_if(condition: ColumnElement[bool]) -> ColumnElement[int]:
    return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)


def _refresh_ip(session: Session, ip_row: IpRow) -> None:
    cache: RowCache | None = session.info.get(ROW_CACHE)
    if cache is not None:
        # every server row of the IP is (then) in the cache: count there instead of flushing and asking
        if not cache.loaded(ServerRow, (ip_row.updateid, ip_row.ip)):
            _load_scope(session, cache, ServerRow, (ip_row.updateid, ip_row.ip))
        ok = failed = 0
        for r in cache.servers_by_ip.get((ip_row.updateid, ip_row.ip), {}).values():
            if r.reported:
                if r.ok is True:
                    ok += 1
                elif r.ok is False:
                    failed += 1
        ip_row.servers_ok, ip_row.servers_failed = ok, failed
        ip_row.ok = (failed == 0) if ip_row.reported else None
        return
    session.flush()
    ok, failed = session.execute(
        select(
            _count_if(and_(ServerRow.reported.is_(True), ServerRow.ok.is_(True))),
            _count_if(and_(ServerRow.reported.is_(True), ServerRow.ok.is_(False))),
        ).where(ServerRow.updateid == ip_row.updateid, ServerRow.ip == ip_row.ip)
    ).one()
    ip_row.servers_ok, ip_row.servers_failed = int(ok), int(failed)
    ip_row.ok = (int(failed) == 0) if ip_row.reported else None


_BATCHES = select(BatchRow).where(BatchRow.updateid == bindparam("uid", type_=String))
"""An update's batch rows (:func:`_refresh_batches`), built once."""


def refresh(session: Session, update: UpdateRow, *, flush: bool = True) -> None:
    """Recompute the update's counts from its target rows, then its stage and status.

    ``flush=False``: the caller flushed the target rows already and turned autoflush off.
    """
    if flush:
        session.flush()
    for name, value in view_counts.counts_of(session.connection(), [update.updateid])[update.updateid].items():
        setattr(update, name, value)
    _refresh_batches(session, update)
    _derive(update)


def _derive(update: UpdateRow) -> None:
    """The fields derived from the update's own fields and its counts: who asked, stage and status."""
    update.requested_by = update.pull_requested_by or update.push_requested_by or update.update_requested_by
    reported = (
        update.ips_ok + update.ips_failed + update.servers_ok + update.servers_failed
        + update.cdn_dirs_ok + update.cdn_dirs_failed
    ) > 0
    update.stage, update.status = derive_stage(update, results_reported=reported)


def refresh_from_rows(update: UpdateRow, rows: Mapping[type[Any], list[Any]]) -> None:
    """:func:`refresh` from the update's target rows in memory (``rows``: all of them, by model).

    The same counts as :func:`refresh`'s SQL (``x IS TRUE`` is ``x is True``: NULL counts as neither).
    """
    ips: list[IpRow] = rows.get(IpRow, [])
    not_run_ips = {r.ip for r in ips if r.not_run is True}
    servers: list[ServerRow] = rows.get(ServerRow, [])
    update.servers_expected = sum(1 for r in servers if r.expected is True)
    update.servers_ok = sum(1 for r in servers if r.reported is True and r.ok is True)
    update.servers_failed = sum(1 for r in servers if r.reported is True and r.ok is False)
    update.servers_pending = sum(
        1 for r in servers if r.expected is True and r.reported is False and r.ip not in not_run_ips)
    update.servers_not_run = sum(1 for r in servers if r.reported is False and r.ip in not_run_ips)
    update.ips_expected = sum(1 for r in ips if r.expected is True)
    update.ips_ok = sum(1 for r in ips if r.reported is True and r.ok is True)
    update.ips_failed = sum(1 for r in ips if r.reported is True and r.ok is False)
    update.ips_pending = sum(1 for r in ips if r.expected is True and r.reported is False and r.not_run is False)
    update.ips_not_run = sum(1 for r in ips if r.reported is False and r.not_run is True)
    dirs: list[CdnDirRow] = rows.get(CdnDirRow, [])
    update.cdn_dirs_expected = sum(1 for r in dirs if r.expected is True)
    update.cdn_dirs_ok = sum(1 for r in dirs if r.status is True)
    update.cdn_dirs_failed = sum(1 for r in dirs if r.status is False)
    update.cdn_dirs_pending = sum(1 for r in dirs if r.expected is True and r.status is None and r.not_run is False)
    update.cdn_dirs_not_run = sum(1 for r in dirs if r.status is None and r.not_run is True)
    targets: list[RsyncTargetRow] = rows.get(RsyncTargetRow, [])
    update.targets_requested = sum(1 for r in targets if r.requested is True)
    update.targets_ok = sum(1 for r in targets if r.ok is True)
    update.targets_failed = sum(1 for r in targets if r.ok is False)
    update.files_count = len(rows.get(FileRow, []))
    _batch_fields(update, rows.get(BatchRow, []))
    _derive(update)


def refresh_all(session: Session, updateids: Iterable[str]) -> None:
    """:func:`refresh` each of ``updateids`` (once per batch is enough: derived fields depend on rows only)."""
    # One flush for all: refresh reads target rows only and writes update rows only, so the
    # update rows it changes need not be flushed between one update's refresh and the next.
    write_new_rows(session)
    ids = list(dict.fromkeys(updateids))
    counts = view_counts.counts_of(session.connection(), ids)  # grouped: a few queries for all of them
    with session.no_autoflush:
        for updateid in ids:
            update = _get(session, UpdateRow, (updateid,), (updateid,))
            if update is None:
                update = session.get_one(UpdateRow, updateid)
            for name, value in counts[updateid].items():
                setattr(update, name, value)
            _refresh_batches(session, update)
            _derive(update)


def _refresh_batches(session: Session, update: UpdateRow) -> None:
    """Batch counts, and which batch (if any) waits for a go-ahead: the one after a batch that
    finished with ``await_confirm``, not confirmed yet, with no later batch finished."""
    cache: RowCache | None = session.info.get(ROW_CACHE)
    rows: list[BatchRow]
    if cache is not None and cache.loaded(BatchRow, (update.updateid,)):
        rows = [r for r in cache.rows.get(BatchRow, {}).values() if r.updateid == update.updateid]
    else:
        rows = list(session.scalars(_BATCHES, {"uid": update.updateid}).all())
    _batch_fields(update, rows)


def _batch_fields(update: UpdateRow, rows: list[BatchRow]) -> None:
    finished = [r for r in rows if r.finished_at is not None]
    update.batches_total = max((r.batches for r in finished if r.batches), default=None)
    update.batches_finished = len(finished)
    confirmed = {r.batch for r in rows if r.confirmed_by}
    last_finished = max((r.batch for r in finished), default=0)
    waiting = [
        r.batch + 1 for r in finished
        if r.next == "await_confirm" and r.batch == last_finished and r.batch + 1 not in confirmed
    ]
    update.awaiting_batch = waiting[0] if waiting and update.completed_at is None else None


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
