"""What operators look at: an update as the API shows it, and the files it pulled.

The commands of :mod:`producers.cmdb.service` answer with the same :func:`view` of the update they changed.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from bus.contract.events import FileEntry
from producers.cmdb.database import CmdbDatabase
from producers.cmdb.errors import BadState, NotFound
from producers.cmdb.expected import missing_targets
from producers.cmdb.models import HotUpdate, TargetResult
from producers.cmdb.schemas import TargetResultResponse, UpdateResponse


def get_update(database: CmdbDatabase, update_id: str) -> UpdateResponse:
    """The update's state, files, targets and what each target reported."""
    with database.transaction() as session:
        return view(session, load(session, update_id))


def pulled_files(database: CmdbDatabase, update_id: str) -> tuple[str, list[FileEntry]]:
    """The update's state and the files the version receiver pulled; BadState until the pull has finished."""
    with database.transaction() as session:
        row = load(session, update_id)
        if row.files is None:
            why = f": {row.reason}" if row.reason else ""
            raise BadState(f"update {update_id} has no pulled files: it is {row.state}{why}")
        return row.state, [FileEntry.model_validate(f) for f in row.files]


def load(session: Session, update_id: str, *, lock: bool = False) -> HotUpdate:
    """The update's row (locked for the transaction when ``lock``); NotFound if there is none."""
    row = session.get(HotUpdate, update_id, with_for_update=lock)
    if row is None:
        raise NotFound(f"no hot update with id {update_id!r}")
    return row


def view(session: Session, row: HotUpdate) -> UpdateResponse:
    """The update's state, files, targets and what each target reported (the API's body)."""
    results = session.scalars(
        select(TargetResult).where(TargetResult.update_id == row.id).order_by(TargetResult.kind, TargetResult.target)
    ).all()
    derived = {
        "erlang_cmd_list": list(row.erlang_cmd_list or []),
        "not_run": list(row.not_run or []),
        "missing_targets": missing_targets(row, {r.target for r in results})
        if row.update_requested_at is not None else [],
        "results": [TargetResultResponse.model_validate(r) for r in results],
    }
    # Every other field is the row's column of the same name (UpdateResponse reads attributes).
    columns = {name: getattr(row, name) for name in UpdateResponse.model_fields if name not in derived}
    return UpdateResponse.model_validate(columns | derived)
