"""The seed's directory layout, shared by the version receiver and the ops manager."""

from __future__ import annotations

from pathlib import Path

import pytest

from consumers.file_pull.paths import pull_paths
from domain.config import ReceiverConfig
from domain.layout import (
    LayoutError,
    backup_type_root,
    incoming_dir,
    receiver_backup_dir,
    update_path,
    version_source_dir,
)

UPDATE_ID = "350cf0ef-c12e-4bcc-d0df-369a09a4a357"


def test_source_dir_is_the_seeds_reloadfiles_of_the_version():
    assert version_source_dir(Path("/data/version_update"), "hot_server", "ssss", "cn", "004200000") == Path(
        "/data/version_update/server/ssss/cn/004200000/reloadfiles"
    )
    assert version_source_dir(Path("/v"), "hot_client", "ssss", "cn", "1") == Path("/v/client/ssss/cn/1/reloadfiles")


def test_backup_dir_is_the_seeds_hot_backup_of_the_update():
    assert receiver_backup_dir(Path("/data/hot_backup"), "hot_server", "ssss", "cn", UPDATE_ID, "004200000") == Path(
        f"/data/hot_backup/hot_server/ssss/cn/{UPDATE_ID}/004200000"
    )


def test_backup_and_incoming_dirs_share_the_update_path():
    rel = update_path("snqxz", "tw", UPDATE_ID, "003100000")
    assert str(rel) == f"snqxz/tw/{UPDATE_ID}/003100000"
    assert receiver_backup_dir(Path("/b"), "hot_client", "snqxz", "tw", UPDATE_ID, "003100000") == (
        backup_type_root(Path("/b"), "hot_client") / rel
    )
    assert incoming_dir(Path("/in"), "snqxz", "tw", UPDATE_ID, "003100000") == Path("/in") / rel


@pytest.mark.parametrize(
    ("project", "area", "update_id", "version"),
    [
        ("..", "cn", "u1", "1"),
        ("ssss", "../etc", "u1", "1"),
        ("ssss", "cn", "../../x", "1"),
        ("ssss", "cn", "u1", "1/../../x"),
        ("ssss", "cn", "u1", ""),
        ("SSSS/x", "cn", "u1", "1"),
    ],
)
def test_components_that_could_leave_their_directory_are_refused(project, area, update_id, version):
    with pytest.raises(LayoutError):
        receiver_backup_dir(Path("/b"), "hot_server", project, area, update_id, version)


def test_pull_paths_take_roots_from_the_receiver():
    receiver = ReceiverConfig(projects=["ssss"], version_root=Path("/v"), backup_root=Path("/b"))
    paths = pull_paths(receiver, "hot_server", "ssss", "cn", "u-1", "42")
    assert paths.source == Path("/v/server/ssss/cn/42/reloadfiles")
    assert paths.backup == Path("/b/hot_server/ssss/cn/u-1/42")
