"""The CMDB's HTTP API: thin routes that parse, call one service function, and map domain errors."""

from __future__ import annotations

import logging

from fastapi import APIRouter, FastAPI, Request, status
from fastapi.responses import JSONResponse

from bus.id_keys import id_key_from_url
from domain.config import HotupdateConfig
from producers.cmdb import compat, reads, releases, service
from producers.cmdb.database import CmdbDatabase
from producers.cmdb.deps import CmdbContext, ConfigDep, DatabaseDep, OperatorDep
from producers.cmdb.errors import (
    AmbiguousArea,
    BadState,
    CmdbError,
    InvalidChoice,
    NotAllowed,
    NotConfigured,
    NotFound,
    UnknownArea,
    UnknownProject,
)
from producers.cmdb.guard import RequestGuard
from producers.cmdb.schemas import (
    AbortRequest,
    CreatedResponse,
    ErrorResponse,
    FilesResponse,
    LinkedUpdateRequest,
    PushRequest,
    ReleaseResponse,
    StartUpdateRequest,
    UpdateResponse,
)

log = logging.getLogger(__name__)

ERROR_STATUS: dict[type[CmdbError], int] = {
    NotFound: status.HTTP_404_NOT_FOUND,
    BadState: status.HTTP_409_CONFLICT,
    UnknownProject: status.HTTP_422_UNPROCESSABLE_CONTENT,
    UnknownArea: status.HTTP_422_UNPROCESSABLE_CONTENT,
    AmbiguousArea: status.HTTP_422_UNPROCESSABLE_CONTENT,
    InvalidChoice: status.HTTP_422_UNPROCESSABLE_CONTENT,
    NotConfigured: status.HTTP_422_UNPROCESSABLE_CONTENT,
    NotAllowed: status.HTTP_422_UNPROCESSABLE_CONTENT,
}
_ERRORS: dict[int | str, dict[str, object]] = {
    401: {"model": ErrorResponse}, 404: {"model": ErrorResponse}, 409: {"model": ErrorResponse},
    422: {"model": ErrorResponse},
}


router = APIRouter(prefix="/api/updates", responses=_ERRORS)
"""Operator actions are ``POST /{update_id}/<action>``; one refused by the update's state is a 409 saying why."""


@router.post("", status_code=status.HTTP_201_CREATED)
def start_update(body: StartUpdateRequest, operator: OperatorDep, db: DatabaseDep, cfg: ConfigDep) -> CreatedResponse:
    """Start a hot update; the version receiver is asked to pull the version's files."""
    cmd = service.StartUpdate(**body.model_dump())
    update_id = service.start_update(db, cfg, cmd, requested_by=operator)
    return CreatedResponse(id=update_id, state="pull_requested")


@router.get("/{update_id}")
def get_update(update_id: str, _operator: OperatorDep, db: DatabaseDep) -> UpdateResponse:
    """The update's state, files, targets and what each target reported."""
    return reads.get_update(db, update_id)


@router.get("/{update_id}/files")
def get_files(update_id: str, _operator: OperatorDep, db: DatabaseDep) -> FilesResponse:
    """The pulled files, to choose from before pushing."""
    state, files = reads.pulled_files(db, update_id)
    return FilesResponse(id=update_id, state=state, files=files)


@router.post("/{update_id}/push")
def push_update(
    update_id: str, operator: OperatorDep, db: DatabaseDep, cfg: ConfigDep, body: PushRequest | None = None
) -> UpdateResponse:
    """Push the chosen files (all by default) to the area's rsync targets."""
    choice = body or PushRequest()
    cmd = service.PushUpdate(
        files=choice.files, servers=choice.servers, cdn_dirs=choice.cdn_dirs, rollout=choice.rollout,
        update_server_list=choice.update_server_list,
    )
    return service.push_update(db, cfg, update_id, cmd, requested_by=operator)


@router.post("/{update_id}/abort")
def abort_update(
    update_id: str, operator: OperatorDep, db: DatabaseDep, body: AbortRequest | None = None
) -> UpdateResponse:
    """Abort a requested or running update: what started finishes, nothing more starts."""
    reason = body.reason if body else ""
    return service.abort_update(db, update_id, operator, reason)


@router.post("/{update_id}/confirm")
def confirm_batch(update_id: str, operator: OperatorDep, db: DatabaseDep) -> UpdateResponse:
    """The go-ahead for the next batch after a failed one (rollout ``on_failure: confirm``)."""
    return service.confirm_batch(db, update_id, operator)


@router.post("/{update_id}/retry-failed", status_code=status.HTTP_201_CREATED)
def retry_failed(
    update_id: str, operator: OperatorDep, db: DatabaseDep, cfg: ConfigDep, body: LinkedUpdateRequest | None = None
) -> UpdateResponse:
    """A new update, linked to this one, of its files on exactly its failed or not-run servers (CDN dirs)."""
    rollout = body.rollout if body else None
    return service.retry_failed(db, cfg, update_id, operator, rollout)


@router.post("/{update_id}/rollback", status_code=status.HTTP_201_CREATED)
def roll_back(
    update_id: str, operator: OperatorDep, db: DatabaseDep, cfg: ConfigDep, body: LinkedUpdateRequest | None = None
) -> UpdateResponse:
    """A new update, linked to this one, applying the previous completed version to the same targets."""
    rollout = body.rollout if body else None
    return service.roll_back(db, cfg, update_id, operator, rollout)


releases_router = APIRouter(prefix="/api/releases", responses=_ERRORS)
"""Versions teams' pipelines announced (*release announced*): pending until pulled."""


@releases_router.get("")
def list_releases(_operator: OperatorDep, db: DatabaseDep, project: str | None = None) -> list[ReleaseResponse]:
    """Every announced release, newest first; ``update_id`` null: waiting for an operator."""
    return releases.list_releases(db, project)


@releases_router.post("/{release_id}/pull", status_code=status.HTTP_201_CREATED)
def pull_release(release_id: str, operator: OperatorDep, db: DatabaseDep, cfg: ConfigDep) -> ReleaseResponse:
    """Start the pull of a pending release (409 if it was pulled already): a new update, as ``POST /api/updates``."""
    return releases.pull_release(db, cfg, release_id, operator)


compat_router = APIRouter(prefix="/compat/v1", responses=_ERRORS)
"""The seed's requests, field for field, for an old CMDB during a migration (docs/migration.md)."""


@compat_router.post("/{project}/{area}/hot_update", status_code=status.HTTP_201_CREATED)
def seed_hot_update(
    project: str, area: str, body: compat.SeedRequest, operator: OperatorDep, db: DatabaseDep, cfg: ConfigDep
) -> compat.SeedAccepted:
    """The seed's hot_client / hot_server request: pulled, then pushed and run as given (area: name or code)."""
    return compat.accept_seed_request(db, cfg, project, area, body, operator)


def create_app(
    config: HotupdateConfig, database_url: str | None = None, *, database: CmdbDatabase | None = None
) -> FastAPI:
    """The API over ``database`` (or a database opened, and migrated, at ``database_url``)."""
    if database is None:
        database = CmdbDatabase(database_url or config.cmdb.database_url, id_key=id_key_from_url(config.amqp_url))
    if not config.cmdb.operators:
        log.warning("no operators configured (cmdb.operators): every request will be refused")
    app = FastAPI(title="hotupdate CMDB", version="1")
    # a bad token, or a body over the limit, is refused before the body is read (guard.py)
    app.add_middleware(RequestGuard, operators=config.cmdb.operators, max_body_bytes=config.cmdb.max_body_bytes)
    app.state.cmdb = CmdbContext(config=config, database=database)
    app.add_exception_handler(CmdbError, _domain_error)
    app.include_router(router)
    app.include_router(releases_router)
    app.include_router(compat_router)

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


async def _domain_error(_request: Request, exc: Exception) -> JSONResponse:
    code = next((c for cls, c in ERROR_STATUS.items() if isinstance(exc, cls)), status.HTTP_400_BAD_REQUEST)
    return JSONResponse(status_code=code, content={"detail": str(exc)})
