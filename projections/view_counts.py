"""An update's counts of its target rows, for many updates in one query per table.

The live projection derives each update a batch touched once per batch. Counting one update
at a time took five small queries per update: on PostgreSQL, with a few dozen updates per
batch, those round trips were a sixth of the ingest's time. Grouped by update, it is five
queries per batch, whatever the number of updates; :func:`projections.view.refresh` asks the
same for one update. ``x IS TRUE`` counts NULL as neither, as
:func:`projections.view.refresh_from_rows` does in memory for the replay (the tests compare the two).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, and_, bindparam, case, func, select
from sqlalchemy.engine import Connection

from projections.models import CdnDirRow, FileRow, IpRow, RsyncTargetRow, ServerRow

COUNT_FIELDS: tuple[tuple[str, ...], ...] = (
    ("servers_expected", "servers_ok", "servers_failed", "servers_pending", "servers_not_run"),
    ("ips_expected", "ips_ok", "ips_failed", "ips_pending", "ips_not_run"),
    ("cdn_dirs_expected", "cdn_dirs_ok", "cdn_dirs_failed", "cdn_dirs_pending", "cdn_dirs_not_run"),
    ("targets_requested", "targets_ok", "targets_failed"),
    ("files_count",),
)
"""The update's fields each grouped query fills, in its column order (after the update id)."""

CHUNK = 500
"""Update ids per query: well under every database's limit on bound parameters."""


def _count_if(condition: ColumnElement[bool]) -> ColumnElement[int]:
    return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)


@functools.cache
def _grouped_statements() -> tuple[Any, ...]:
    """The grouped count queries, built once (building them costs more than running them)."""
    uids: Any = bindparam("uids", expanding=True)
    ip_not_run = (
        select(IpRow.ip)
        .where(IpRow.updateid == ServerRow.updateid, IpRow.ip == ServerRow.ip, IpRow.not_run.is_(True))
        .exists()
    )
    servers = select(
        ServerRow.updateid,
        _count_if(ServerRow.expected.is_(True)),
        _count_if(and_(ServerRow.reported.is_(True), ServerRow.ok.is_(True))),
        _count_if(and_(ServerRow.reported.is_(True), ServerRow.ok.is_(False))),
        _count_if(and_(ServerRow.expected.is_(True), ServerRow.reported.is_(False), ~ip_not_run)),
        _count_if(and_(ServerRow.reported.is_(False), ip_not_run)),
    ).where(ServerRow.updateid.in_(uids)).group_by(ServerRow.updateid)
    ips = select(
        IpRow.updateid,
        _count_if(IpRow.expected.is_(True)),
        _count_if(and_(IpRow.reported.is_(True), IpRow.ok.is_(True))),
        _count_if(and_(IpRow.reported.is_(True), IpRow.ok.is_(False))),
        _count_if(and_(IpRow.expected.is_(True), IpRow.reported.is_(False), IpRow.not_run.is_(False))),
        _count_if(and_(IpRow.reported.is_(False), IpRow.not_run.is_(True))),
    ).where(IpRow.updateid.in_(uids)).group_by(IpRow.updateid)
    cdn = select(
        CdnDirRow.updateid,
        _count_if(CdnDirRow.expected.is_(True)),
        _count_if(CdnDirRow.status.is_(True)),
        _count_if(CdnDirRow.status.is_(False)),
        _count_if(and_(CdnDirRow.expected.is_(True), CdnDirRow.status.is_(None), CdnDirRow.not_run.is_(False))),
        _count_if(and_(CdnDirRow.status.is_(None), CdnDirRow.not_run.is_(True))),
    ).where(CdnDirRow.updateid.in_(uids)).group_by(CdnDirRow.updateid)
    targets = select(
        RsyncTargetRow.updateid,
        _count_if(RsyncTargetRow.requested.is_(True)),
        _count_if(RsyncTargetRow.ok.is_(True)),
        _count_if(RsyncTargetRow.ok.is_(False)),
    ).where(RsyncTargetRow.updateid.in_(uids)).group_by(RsyncTargetRow.updateid)
    files = (select(FileRow.updateid, func.count()).where(FileRow.updateid.in_(uids))
             .group_by(FileRow.updateid))
    return servers, ips, cdn, targets, files


def counts_of(connection: Connection, updateids: Sequence[str]) -> dict[str, dict[str, int]]:
    """Every count field of each of ``updateids``, by update id (0 where it has no such rows)."""
    counts: dict[str, dict[str, int]] = {
        uid: dict.fromkeys((f for fields in COUNT_FIELDS for f in fields), 0) for uid in updateids}
    for start in range(0, len(updateids), CHUNK):
        chunk = list(updateids[start:start + CHUNK])
        for statement, fields in zip(_grouped_statements(), COUNT_FIELDS, strict=True):
            for row in connection.execute(statement, {"uids": chunk}):
                counts[row[0]].update(zip(fields, map(int, row[1:]), strict=True))
    return counts
