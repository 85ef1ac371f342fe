"""The CMDB's service functions on SQLite and PostgreSQL: state and outbox change together or not at all."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from bus.idempotency import ProcessedEvent  # noqa: F401  (its table is part of the metadata compared)
from domain.config import HotupdateConfig
from domain.db import Base
from producers.cmdb import reads, service
from producers.cmdb.database import CmdbDatabase
from producers.cmdb.errors import AmbiguousArea, BadState, InvalidChoice, NotConfigured, NotFound, UnknownProject
from producers.cmdb.process_manager import on_files_pulled
from producers.cmdb.service import PushUpdate, StartUpdate
from producers.cmdb.states import State
from tests.cmdb_support import FILES, files_pulled, incoming, outbox, row

SSSS_SERVER = StartUpdate(project="ssss", area="大陆", update_type="hot_server", version="004200000")


def _pulled(database: CmdbDatabase, config: HotupdateConfig, cmd: StartUpdate = SSSS_SERVER) -> str:
    update_id = service.start_update(database, config, cmd, requested_by="alice")
    on_files_pulled(incoming(files_pulled(outbox(database)[-1])), database)
    return update_id


def test_migration_creates_exactly_the_tables_the_models_describe(database):
    from domain.db import upgrade

    upgrade(database.url, "bus")
    with database.engine.connect() as conn:
        tables = {t for t in Base.metadata.tables if t.startswith(("cmdb_", "bus_"))}
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert {"cmdb_hot_updates", "cmdb_outbox", "cmdb_target_results"} <= tables
    relevant = [d for d in diff if "cmdb_" in repr(d) or "bus_" in repr(d)]
    assert relevant == []


def test_start_records_the_update_and_queues_pull_requested_together(database, config):
    update_id = service.start_update(database, config, SSSS_SERVER, requested_by="alice")
    [env] = outbox(database)
    assert env.type == "hotupdate.pull.requested.v1"
    assert (env.source, env.updateid, env.project, env.area, env.sequence) == (
        "hotupdate/cmdb", update_id, "ssss", "cn", 0
    )
    assert env.correlationid == update_id
    assert env.data == {"update_type": "hot_server", "version": "004200000", "area_name": "大陆",
                        "requested_by": "alice"}
    saved = row(database, update_id)
    assert saved.state == State.PULL_REQUESTED
    assert saved.pull_event_id == env.id
    assert saved.erlang_cmd_list == ["user_default:reload()."]  # the project's default


def test_start_keeps_the_operators_erlang_commands(database, config):
    cmd = StartUpdate(project="ssss", area="cn", update_type="hot_server", version="1",
                      erlang_cmd_list=["c:l(role_server)."])
    update_id = service.start_update(database, config, cmd, requested_by="bob")
    assert row(database, update_id).erlang_cmd_list == ["c:l(role_server)."]


@pytest.mark.parametrize(
    ("cmd", "error", "message"),
    [
        (StartUpdate(project="nope", area="大陆", update_type="hot_server", version="1"), UnknownProject, "nope"),
        (StartUpdate(project="snqxz", area="大陆", update_type="hot_server", version="1"), AmbiguousArea,
         "cn, cn_new"),
        (StartUpdate(project="ssss", area="大陆", update_type="hot_server", version="4.2"), InvalidChoice,
         "version"),
        (StartUpdate(project="ssss", area="大陆", update_type="hot_client", version="1"), InvalidChoice,
         "client_type 0 or 1"),
        (StartUpdate(project="ssss", area="大陆", update_type="hot_server", version="1", client_type=0),
         InvalidChoice, "hot_client updates only"),
    ],
)
def test_refused_start_leaves_nothing_behind(database, config, cmd, error, message):
    with pytest.raises(error, match=message):
        service.start_update(database, config, cmd, requested_by="alice")
    assert outbox(database) == []


def test_push_before_the_pull_finished_is_refused_and_queues_nothing(database, config):
    update_id = service.start_update(database, config, SSSS_SERVER, requested_by="alice")
    with pytest.raises(BadState, match="pull has not finished"):
        service.push_update(database, config, update_id, PushUpdate(), requested_by="alice")
    assert len(outbox(database)) == 1
    assert row(database, update_id).state == State.PULL_REQUESTED


def test_push_of_an_unknown_update_is_not_found(database, config):
    with pytest.raises(NotFound, match="no hot update with id 'nope'"):
        service.push_update(database, config, "nope", PushUpdate(), requested_by="alice")


def test_push_sends_all_pulled_files_to_the_areas_rsync_targets_by_default(database, config):
    update_id = _pulled(database, config)
    pulled = outbox(database)[0]
    view = service.push_update(database, config, update_id, PushUpdate(), requested_by="bob")
    push = outbox(database)[-1]
    assert push.type == "hotupdate.push.requested.v1"
    assert push.data["files"] == [f.model_dump() for f in FILES]
    assert push.data["targets"] == [{"name": "ssss_cn", "ip": "127.0.0.1", "port": 10873,
                                     "module": "cmdb_hot_server", "user": "cmdb_user"}]
    assert push.data["requested_by"] == "bob"
    assert push.sequence == 2  # after the pull request (0) and the files pulled (1)
    assert push.causationid == row(database, update_id).pulled_event_id
    assert push.correlationid == pulled.correlationid == update_id
    assert view.state == State.PUSH_REQUESTED
    assert view.ops_manager == "ops1"
    assert view.narrowed is False


def test_push_sends_only_the_chosen_files_in_pulled_order(database, config):
    update_id = _pulled(database, config)
    names = ["ebin/mail_server.beam", "ebin/role_server.beam"]
    service.push_update(database, config, update_id, PushUpdate(files=names), requested_by="alice")
    assert [f["file_name"] for f in outbox(database)[-1].data["files"]] == [
        "ebin/role_server.beam", "ebin/mail_server.beam"
    ]


def test_choosing_a_file_that_was_not_pulled_is_refused(database, config):
    update_id = _pulled(database, config)
    with pytest.raises(InvalidChoice, match=r"not among the pulled files.*ebin/evil\.beam"):
        service.push_update(database, config, update_id, PushUpdate(files=["ebin/evil.beam"]), requested_by="alice")
    assert row(database, update_id).state == State.PULLED
    assert len(outbox(database)) == 1


def test_narrowed_push_keeps_the_chosen_servers(database, config):
    update_id = _pulled(database, config)
    view = service.push_update(database, config, update_id, PushUpdate(servers=["qq_3"]), requested_by="alice")
    assert view.narrowed is True
    assert view.update_targets == {"update_server_list": {"game": {"127.0.0.12": ["qq_3"]}}}


def test_push_to_an_area_without_rsync_target_is_refused(database, config):
    cmd = StartUpdate(project="snqxz", area="大陆", area_code="cn", update_type="hot_server", version="1")
    update_id = _pulled(database, config, cmd)
    with pytest.raises(NotConfigured, match="no rsync target"):
        service.push_update(database, config, update_id, PushUpdate(), requested_by="alice")
    assert len(outbox(database)) == 1


def test_pushing_twice_is_refused(database, config):
    update_id = _pulled(database, config)
    service.push_update(database, config, update_id, PushUpdate(), requested_by="alice")
    with pytest.raises(BadState, match="it is push_requested"):
        service.push_update(database, config, update_id, PushUpdate(), requested_by="alice")
    assert len(outbox(database)) == 2


def test_pulled_files_are_readable_once_pulled(database, config):
    update_id = service.start_update(database, config, SSSS_SERVER, requested_by="alice")
    with pytest.raises(BadState, match="no pulled files: it is pull_requested"):
        reads.pulled_files(database, update_id)
    on_files_pulled(incoming(files_pulled(outbox(database)[0])), database)
    assert reads.pulled_files(database, update_id) == (State.PULLED, FILES)
