"""Getting or adding an update's target rows (IPs, servers, CDN dirs, rsync targets, files, batches).

Each key is checked against its column's size here, so a too long value fails its event's
reducer (:class:`projections.view.order.ViewLimitError`) instead of the transaction.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from bus.contract.envelope import Envelope
from bus.contract.events import FileEntry, RsyncTargetResult
from projections.models import BatchRow, CdnDirRow, FileRow, IpRow, RsyncTargetRow, ServerRow
from projections.view.order import fits, later, order_key, text, when
from projections.view.rows import ViewRows


def ip_of(rows: ViewRows, updateid: str, ip: str) -> IpRow:
    ip = fits(ip, 128, "IP")
    row = rows.get(IpRow, (updateid, ip))
    if row is None:
        row = rows.add(IpRow, (updateid, ip), updateid=updateid, ip=ip, expected=False, reported=False,
                       not_run=False, servers_ok=0, servers_failed=0)
    return row


def server_rows(rows: ViewRows, updateid: str, ip: str, servers: Iterable[str]) -> list[ServerRow]:
    """The server rows of ``servers`` (in order) of one IP, added where missing."""
    return rows.servers(updateid, fits(ip, 128, "IP"), servers)


def cdn_dir_of(rows: ViewRows, updateid: str, root: str, cdn_dir: str) -> CdnDirRow:
    root = fits(root, 255, "CDN root URL")
    row = rows.get(CdnDirRow, (updateid, root, cdn_dir))
    if row is None:
        row = rows.add(CdnDirRow, (updateid, root, cdn_dir), updateid=updateid, cdn_root_url=root,
                       cdn_dir=cdn_dir, expected=False)
    return row


def target_of(rows: ViewRows, updateid: str, name: str) -> RsyncTargetRow:
    row = rows.get(RsyncTargetRow, (updateid, name))
    if row is None:
        row = rows.add(RsyncTargetRow, (updateid, name), updateid=updateid, name=name, requested=False)
    return row


def batch_of(rows: ViewRows, updateid: str, batch: int) -> BatchRow:
    row = rows.get(BatchRow, (updateid, batch))
    if row is None:
        row = rows.add(BatchRow, (updateid, batch), updateid=updateid, batch=batch)
    return row


def file_of(rows: ViewRows, updateid: str, entry: FileEntry, envelope: Envelope, rank: int, flag: str) -> None:
    """The file's row, its checksum and size from the latest event that names it; ``flag`` set."""
    name_key = hashlib.sha256(entry.file_name.encode("utf-8")).hexdigest()
    key = order_key(envelope, rank)
    row = rows.get(FileRow, (updateid, name_key))
    if row is None:
        row = rows.add(FileRow, (updateid, name_key),
                       updateid=updateid, name_key=name_key, file_name=entry.file_name, file_md5=entry.file_md5,
                       size=entry.size, pulled=False, pushed=False, in_update=False, source_key=key)
    elif key >= row.source_key:
        row.file_md5, row.size, row.source_key = entry.file_md5, entry.size, key
    setattr(row, flag, True)


def target_result(rows: ViewRows, updateid: str, result: RsyncTargetResult, envelope: Envelope) -> None:
    row = target_of(rows, updateid, result.name)
    key = order_key(envelope)
    if later(row.result_key, key):
        row.ip, row.port, row.module, row.user = fits(result.ip, 128, "IP"), result.port, result.module, result.user
        row.ok, row.bytes, row.seconds = result.ok, result.bytes, result.seconds
        row.error = text(result.error) or None
        row.reported_at = when(envelope)
        row.result_key = key
