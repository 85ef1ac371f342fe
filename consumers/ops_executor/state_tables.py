"""The executor's state tables, read and written synchronously (SQLite by default, PostgreSQL in production).

:class:`consumers.ops_executor.state.StateStore` reaches them from a worker thread; tests and tools may
read them directly.
"""

from __future__ import annotations

import json
from datetime import UTC

from sqlalchemy import Executable, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from bus.contract.events import ServerResult
from consumers.ops_executor.records import (
    AbortRecord,
    BatchRecord,
    CdnKey,
    ServerKey,
    ServerOutcome,
    UpdateRecord,
    UpdateStatus,
    VerdictRecord,
)
from consumers.ops_executor.state_models import (
    ExecutorAbort,
    ExecutorBatch,
    ExecutorCdnResult,
    ExecutorConfirm,
    ExecutorServerResult,
    ExecutorServerStart,
    ExecutorUpdate,
    ExecutorVerdict,
    batch_record,
    now,
    update_record,
)
from domain.db import Base, make_engine, upgrade

# An update still in one of these has no result yet: a restarted executor resumes it.
# ("waiting" for an operator's go-ahead is unfinished too, but only a go-ahead or an abort resumes it.)
UNFINISHED: tuple[UpdateStatus, ...] = ("running", "interrupted")


def _add_first(session: Session, row: Base) -> bool:
    """Insert ``row`` and commit; False when a row with its key is already there (the first record wins)."""
    session.add(row)
    try:
        session.commit()
        return True
    except IntegrityError:
        session.rollback()
        return False


class StateTables:
    """The executor's SQL tables (SQLite file by default, PostgreSQL in production), called synchronously.

    The executor reaches them through :class:`StateStore`; tests and tools may read them directly.
    """

    def __init__(self, url: str, *, migrate: bool = True) -> None:
        if migrate:
            upgrade(url, "ops_executor")
        self._engine = make_engine(url)

    def close(self) -> None:
        self._engine.dispose()

    # --- updates -----------------------------------------------------------------

    def claim(self, *, update_id: str, project: str, area: str, update_type: str, version: str,
              request: str) -> tuple[UpdateRecord, bool]:
        """Start recording an update, or take over an unfinished one; returns (record, newly created).

        Taking over counts an attempt, so an update that keeps killing its executor can be given up.
        """
        with Session(self._engine) as session:
            row = session.get(ExecutorUpdate, update_id)
            if row is None:
                row = ExecutorUpdate(update_id=update_id, project=project, area=area, update_type=update_type,
                                     version=version, request=request, status="running", attempts=1,
                                     refused=False, final_data="", ok_count=0, failed_count=0,
                                     started_at=now())
                session.add(row)
                try:
                    session.commit()
                except IntegrityError:  # claimed concurrently: read the winner's row
                    session.rollback()
                    return self.claim(update_id=update_id, project=project, area=area,
                                      update_type=update_type, version=version, request=request)
                return update_record(row), True
            if row.status in UNFINISHED:
                row.status = "running"
                row.attempts += 1
                session.commit()
            return update_record(row), False

    def get(self, update_id: str) -> UpdateRecord | None:
        with Session(self._engine) as session:
            row = session.get(ExecutorUpdate, update_id)
            return update_record(row) if row is not None else None

    def finish(self, update_id: str, *, status: UpdateStatus, final_result: bool, final_data: str,
               ok_count: int, failed_count: int, refused: bool = False, outcome: str | None = None,
               not_run: tuple[str, ...] | list[str] = ()) -> UpdateRecord:
        with Session(self._engine) as session:
            row = session.get(ExecutorUpdate, update_id)
            if row is None:
                raise KeyError(update_id)
            row.status, row.final_result, row.final_data = status, final_result, final_data
            row.ok_count, row.failed_count, row.refused = ok_count, failed_count, refused
            row.outcome = outcome or ("succeeded" if final_result else "failed")
            row.not_run = json.dumps(list(not_run), ensure_ascii=False)
            row.waiting_batch = None
            row.finished_at = now()
            session.commit()
            return update_record(row)

    def mark_waiting(self, update_id: str, *, batch: int, emitted: int) -> None:
        """Record that the update waits for a go-ahead for ``batch``; it holds nothing until one comes."""
        with Session(self._engine) as session:
            row = session.get(ExecutorUpdate, update_id)
            if row is None:
                raise KeyError(update_id)
            row.status, row.waiting_batch, row.emitted = "waiting", batch, emitted
            session.commit()

    def reopen(self, update_id: str) -> UpdateRecord | None:
        """A waiting update goes back to running (a go-ahead or abort came); None if it was not waiting.

        Not counted as a takeover: nothing was interrupted.
        """
        with Session(self._engine) as session:
            row = session.get(ExecutorUpdate, update_id)
            if row is None or row.status != "waiting":
                return None
            record = update_record(row)  # as it was: waiting_batch and emitted tell where to go on
            row.status = "running"
            session.commit()
            return record

    def mark_interrupted(self, update_id: str) -> None:
        with Session(self._engine) as session:
            row = session.get(ExecutorUpdate, update_id)
            if row is not None and row.status == "running":
                row.status = "interrupted"
                session.commit()

    def unfinished(self) -> list[UpdateRecord]:
        """Updates a previous executor left running or interrupted, oldest first."""
        with Session(self._engine) as session:
            rows = session.scalars(
                select(ExecutorUpdate).where(ExecutorUpdate.status.in_(UNFINISHED))
                .order_by(ExecutorUpdate.started_at)
            ).all()
            return [update_record(r) for r in rows]

    # --- batches, go-aheads, aborts ------------------------------------------------------

    def record_batch(self, update_id: str, batch: BatchRecord) -> BatchRecord:
        """Record a finished batch; the first record wins and is returned."""
        with Session(self._engine) as session:
            if _add_first(session, ExecutorBatch(update_id=update_id, batch=batch.batch, ok_count=batch.ok_count,
                                                 failed_count=batch.failed_count, next=batch.next,
                                                 finished_at=batch.finished_at)):
                return batch
            row = session.get(ExecutorBatch, (update_id, batch.batch))
            assert row is not None
            return batch_record(row)

    def batches(self, update_id: str) -> dict[int, BatchRecord]:
        with Session(self._engine) as session:
            rows = session.scalars(select(ExecutorBatch).where(ExecutorBatch.update_id == update_id)).all()
            return {r.batch: batch_record(r) for r in rows}

    def record_confirm(self, update_id: str, batch: int, confirmed_by: str) -> bool:
        """Record a go-ahead for ``batch``; False if the update is unknown here (the first record wins)."""
        with Session(self._engine) as session:
            if session.get(ExecutorUpdate, update_id) is None:
                return False
            _add_first(session, ExecutorConfirm(update_id=update_id, batch=batch, confirmed_by=confirmed_by,
                                                confirmed_at=now()))
            return True

    def confirmed(self, update_id: str, batch: int) -> bool:
        with Session(self._engine) as session:
            return session.get(ExecutorConfirm, (update_id, batch)) is not None

    def record_verdict(self, update_id: str, verdict: VerdictRecord) -> bool:
        """Record a verdict on ``verdict.batch``; False if the update is unknown here (the first record wins)."""
        with Session(self._engine) as session:
            if session.get(ExecutorUpdate, update_id) is None:
                return False
            _add_first(session, ExecutorVerdict(update_id=update_id, batch=verdict.batch, verdict=verdict.verdict,
                                                reason=verdict.reason, link=verdict.link,
                                                analysed_by=verdict.analysed_by, received_at=verdict.received_at))
            return True

    def verdict(self, update_id: str, batch: int) -> VerdictRecord | None:
        with Session(self._engine) as session:
            row = session.get(ExecutorVerdict, (update_id, batch))
            return None if row is None else VerdictRecord(row.batch, row.verdict, row.reason, row.link,
                                                          row.analysed_by,
                                                          row.received_at if row.received_at.tzinfo
                                                          else row.received_at.replace(tzinfo=UTC))

    def record_abort(self, update_id: str, requested_by: str, reason: str) -> None:
        """Record an abort request (the first one wins), known or not yet known update alike."""
        with Session(self._engine) as session:
            _add_first(session, ExecutorAbort(update_id=update_id, requested_by=requested_by, reason=reason,
                                              requested_at=now()))

    def abort_of(self, update_id: str) -> AbortRecord | None:
        with Session(self._engine) as session:
            row = session.get(ExecutorAbort, update_id)
            return AbortRecord(row.requested_by, row.reason) if row is not None else None

    # --- per-target results ------------------------------------------------------------

    def record_server(self, update_id: str, key: ServerKey, outcome: ServerOutcome) -> None:
        """Record a server's result; the first record wins (a server is never re-run once recorded)."""
        group, ip, server = key
        with Session(self._engine) as session:
            _add_first(session, ExecutorServerResult(
                update_id=update_id, group=group, ip=ip, server=server,
                update_status=outcome.update.status, update_data=outcome.update.data,
                erl_status=outcome.erl.status, erl_data=outcome.erl.data, recorded_at=now(),
            ))

    def record_servers(self, rows: list[dict[str, object]]) -> None:
        """Record many servers' results in one transaction; a row already recorded is kept (first wins)."""
        self._insert_new(ExecutorServerResult, rows)

    def record_starts(self, rows: list[dict[str, object]]) -> None:
        """Note that work is starting on these servers (before any file or command reaches them)."""
        self._insert_new(ExecutorServerStart, rows)

    def started_servers(self, update_id: str) -> set[ServerKey]:
        with Session(self._engine) as session:
            rows = session.execute(
                select(ExecutorServerStart.group, ExecutorServerStart.ip, ExecutorServerStart.server)
                .where(ExecutorServerStart.update_id == update_id)
            ).all()
            return {(r[0], r[1], r[2]) for r in rows}

    def _insert_new(self, model: type[Base], rows: list[dict[str, object]]) -> None:
        dialect = self._engine.dialect.name
        statement: Executable
        if dialect == "postgresql":
            statement = postgresql_insert(model).on_conflict_do_nothing()
        elif dialect == "sqlite":
            statement = sqlite_insert(model).on_conflict_do_nothing()
        else:
            raise NotImplementedError(f"executor state on {dialect}: use SQLite or PostgreSQL")
        with self._engine.begin() as connection:
            connection.execute(statement, rows)

    def server_results(self, update_id: str) -> dict[ServerKey, ServerOutcome]:
        with Session(self._engine) as session:
            rows = session.scalars(
                select(ExecutorServerResult).where(ExecutorServerResult.update_id == update_id)
            ).all()
            return {
                (r.group, r.ip, r.server): ServerOutcome(
                    ServerResult(data=r.update_data, status=r.update_status),
                    ServerResult(data=r.erl_data, status=r.erl_status),
                )
                for r in rows
            }

    def record_cdn(self, update_id: str, key: CdnKey, result: ServerResult) -> None:
        """Record a CDN dir's result; the first record wins."""
        with Session(self._engine) as session:
            _add_first(session, ExecutorCdnResult(update_id=update_id, cdn_root_url=key[0], cdn_dir=key[1],
                                                  status=result.status, data=result.data, recorded_at=now()))

    def cdn_results(self, update_id: str) -> dict[CdnKey, ServerResult]:
        with Session(self._engine) as session:
            rows = session.scalars(
                select(ExecutorCdnResult).where(ExecutorCdnResult.update_id == update_id)
            ).all()
            return {(r.cdn_root_url, r.cdn_dir): ServerResult(data=r.data, status=r.status) for r in rows}
