"""Releases announced by teams' pipelines: recorded once, pulled automatically where the project says so.

*release announced* (a team tool's event; the identity table lets only the teams granted it in
``broker.teams`` publish it) names a project and area (the envelope's), an update type, a version
and its files. The CMDB records one pending release per (project, area, type, version): a second
announcement of the same release, under any event id, changes nothing. Where the project's
``auto_pull_on_release`` is true the pull starts in the same transaction as the record; otherwise
an operator starts it (``POST /api/releases/{id}/pull``). The update takes the announcement's
``updateid`` and chains to it (causation, correlation), so the dashboard shows one chain.
"""

from __future__ import annotations

import logging

from sqlalchemy import select
from sqlalchemy.orm import Session

from bus.consumer import Reject
from bus.contract.events import ReleaseAnnounced
from bus.handling import Incoming
from domain.config import HotupdateConfig
from producers.cmdb import service
from producers.cmdb.database import CmdbDatabase
from producers.cmdb.errors import BadState, CmdbError, NotFound
from producers.cmdb.models import HotUpdate, Release
from producers.cmdb.schemas import ReleaseResponse

log = logging.getLogger(__name__)

AUTO_PULL = "auto_pull_on_release"


def on_release_announced(msg: Incoming[ReleaseAnnounced], database: CmdbDatabase, config: HotupdateConfig) -> None:
    """Record the release (once); start its pull when the project's policy says so."""
    env, event = msg.envelope, msg.event
    proj = config.projects.get(env.project)
    if proj is None:
        raise Reject(f"release: {env.type} {env.id} names project {env.project!r}, which is not configured")
    if proj.area_name_of(event.update_type, env.area) is None:
        raise Reject(f"release: {env.type} {env.id}: project {env.project!r} has no {event.update_type} area "
                     f"with code {env.area!r}")
    with database.transaction() as session:
        known = session.scalars(select(Release).where(
            Release.project == env.project, Release.area_code == env.area,
            Release.update_type == event.update_type, Release.version == event.version,
        )).first()
        if known is not None:
            log.info("release %s %s/%s %s was announced before (%s); nothing to do",
                     event.update_type, env.project, env.area, event.version, known.id)
            return
        release = Release(
            id=env.id, announced_updateid=env.updateid, project=env.project, area_code=env.area,
            update_type=event.update_type, version=event.version, client_type=event.client_type,
            files=[f.model_dump(mode="json") for f in event.files], announced_by=event.announced_by,
            publisher=msg.publisher or "", link=event.link,
        )
        session.add(release)
        if proj.auto_pull_on_release:
            try:
                _start_pull(session, config, release, requested_by=msg.publisher or event.announced_by,
                            started_by=AUTO_PULL)
            except CmdbError as exc:  # recorded as pending: an operator sees it and decides
                log.warning("release %s cannot be pulled automatically: %s", release.id, exc)


def list_releases(database: CmdbDatabase, project: str | None = None) -> list[ReleaseResponse]:
    """Every announced release, newest first (of one project when given)."""
    with database.transaction() as session:
        query = select(Release).order_by(Release.announced_at.desc())
        if project is not None:
            query = query.where(Release.project == project)
        return [ReleaseResponse.model_validate(r) for r in session.scalars(query)]


def pull_release(database: CmdbDatabase, config: HotupdateConfig, release_id: str, operator: str) -> ReleaseResponse:
    """An operator starts the pull of a pending release; 409 if it was started already."""
    with database.transaction() as session:
        release = session.get(Release, release_id, with_for_update=True)
        if release is None:
            raise NotFound(f"no release with id {release_id!r}")
        if release.update_id is not None:
            raise BadState(f"release {release_id} was pulled already (update {release.update_id}, "
                           f"started by {release.pull_started_by})")
        _start_pull(session, config, release, requested_by=operator, started_by=operator)
        return ReleaseResponse.model_validate(release)


def _start_pull(session: Session, config: HotupdateConfig, release: Release, *, requested_by: str,
                started_by: str) -> None:
    # The announcement's update id, unless an update has it already (then a fresh one).
    taken = session.get(HotUpdate, release.announced_updateid) is not None
    cmd = service.StartUpdate(
        project=release.project, area=release.area_code, area_code=release.area_code,
        update_type="hot_client" if release.update_type == "hot_client" else "hot_server",
        version=release.version, client_type=release.client_type,
    )
    release.update_id = service.add_update(
        session, config, cmd, requested_by,
        update_id=None if taken else release.announced_updateid,
        causationid=None if taken else release.id, correlationid=None if taken else release.id,
    )
    release.pull_started_by = started_by
