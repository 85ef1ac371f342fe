"""The old system as a client: the seed's CMDB → ops manager request, accepted field for field.

An old CMDB (or a script written against the ops manager's API of the seed document) POSTs its
``hot_client`` or ``hot_server`` JSON to ``/compat/v1/<project>/<area>/hot_update``. The request
becomes the same events as the native API: the update is recorded (its id: the seed's ``uuid``)
and pulled (*pull requested*); once pulled the CMDB pushes exactly ``update_file_list`` (refusing
files whose md5 changed) to the project's rsync targets, and requests the update on the given
servers or CDN dirs with ``erlang_cmd_list`` — the automatic push retries and rollbacks use
(:mod:`producers.cmdb.process_manager`). docs/migration.md maps the fields.
"""

from __future__ import annotations

import logging
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from domain.config import HotupdateConfig
from domain.types import Md5Hex, RelativeFileName, UpdateType, Version
from producers.cmdb import service
from producers.cmdb.areas import project_config
from producers.cmdb.database import CmdbDatabase
from producers.cmdb.errors import BadState
from producers.cmdb.models import HotUpdate
from producers.cmdb.targets import require_allowed, rsync_targets, update_targets

log = logging.getLogger(__name__)


class SeedFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    file_name: RelativeFileName
    file_md5: Md5Hex


class SeedCdnDir(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cdn_root_url: str = Field(min_length=1, max_length=255)
    cdn_dir: str = Field(min_length=1, max_length=255)


class SeedRequest(BaseModel):
    """The seed's request (前端热更新 / 后端热更新), field for field."""

    model_config = ConfigDict(extra="forbid")
    uuid: str = Field(min_length=1, max_length=36, pattern=r"^[A-Za-z0-9-]+$", description="becomes the update id")
    update_type: UpdateType
    version: Version
    update_file_list: list[SeedFile] = Field(min_length=1)
    ops_manager: int | str | None = Field(default=None, description="accepted and ignored: the rsync target decides")
    client_type: Literal[0, 1] | None = None
    data: list[SeedCdnDir] | None = None
    update_server_list: dict[str, dict[str, list[str]]] | None = None
    erlang_cmd_list: list[str] | None = None

    def kind(self) -> UpdateType:
        """The seed's own hot_server example says ``hot_client``: its targets say what it is."""
        if self.update_server_list and not self.data:
            return "hot_server"
        if self.data and not self.update_server_list:
            return "hot_client"
        return self.update_type


class SeedAccepted(BaseModel):
    uuid: str
    state: str
    update_type: UpdateType
    note: str = ""


def accept_seed_request(
    database: CmdbDatabase, config: HotupdateConfig, project: str, area: str, req: SeedRequest, operator: str
) -> SeedAccepted:
    """Record the update, queue its pull, and fix the files and targets its automatic push will use."""
    kind = req.kind()
    note = "" if kind == req.update_type else f"update_type {req.update_type!r} taken as {kind!r}: its targets say so"
    if note:
        log.warning("seed request %s: %s", req.uuid, note)
    cmd = service.StartUpdate(
        project=project, area=area, update_type=kind, version=req.version,
        client_type=req.client_type if kind == "hot_client" else None,
        erlang_cmd_list=req.erlang_cmd_list if kind == "hot_server" else None,
    )
    with database.transaction() as session:
        if session.get(HotUpdate, req.uuid) is not None:
            raise BadState(f"an update with uuid {req.uuid!r} exists already")
        update_id = service.add_update(session, config, cmd, operator, update_id=req.uuid)
        row = session.get_one(HotUpdate, update_id)
        proj = project_config(config, project)
        refs, ops_manager = rsync_targets(project, proj, row.area_name)
        targets = update_targets(
            project, proj, row.area_code, kind,
            cdn_dirs=[f"{d.cdn_root_url}/{d.cdn_dir}" for d in req.data or []] if kind == "hot_client" else None,
            update_server_list=req.update_server_list if kind == "hot_server" else None,
        )
        require_allowed(project, proj, row.area_code, targets, row.erlang_cmd_list or [])
        row.rsync_targets = [t.model_dump(mode="json") for t in refs]
        row.ops_manager = ops_manager
        row.update_targets = targets
        row.narrowed = True
        row.auto_push = {"files": [f.file_name for f in req.update_file_list],
                         "md5": {f.file_name: f.file_md5 for f in req.update_file_list}}
    return SeedAccepted(uuid=update_id, state="pull_requested", update_type=kind, note=note)
