"""Each package registers its own Alembic branch; domain/db.py finds every one of them."""

from __future__ import annotations

from pathlib import Path

from alembic.script import ScriptDirectory

from domain.db import alembic_config, migration_branches

ROOT = Path(__file__).resolve().parents[2]


def test_every_migrations_folder_in_the_source_tree_is_registered():
    folders = {p.resolve() for p in ROOT.glob("*/**/migrations") if ".venv" not in p.parts and any(p.glob("*.py"))}
    assert folders, "the tree has migrations folders"
    assert folders == {p.resolve() for p in migration_branches().values()}


def test_each_registered_name_is_the_branch_of_every_revision_in_its_folder():
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    folders = {folder.resolve(): name for name, folder in migration_branches().items()}
    seen = set()
    for rev in script.walk_revisions():
        name = folders[Path(rev.path).resolve().parent]
        assert _branch_of(script, rev) == name, rev.path
        seen.add(name)
    assert seen == set(migration_branches())


def _branch_of(script: ScriptDirectory, rev: object) -> str:
    current = rev
    while True:
        labels = getattr(current, "branch_labels", set())
        if labels:
            return next(iter(labels))
        down = getattr(current, "down_revision", None)
        assert down, f"revision {getattr(rev, 'revision', rev)} reaches no labelled base"
        current = script.get_revision(down if isinstance(down, str) else down[0])
