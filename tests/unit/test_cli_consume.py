"""``hotupdate consume``: one subcommand per role, the machine named, a wrong name refused with a message."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from cli import consume

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "example.yaml"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hotupdate")
    consume.register(parser.add_subparsers(dest="command", required=True))
    return parser


@pytest.mark.parametrize("role", ["file-pull", "file-push"])
def test_consume_role_takes_config_receiver_and_processed_db(role):
    args = _parser().parse_args(["consume", role, "--config", "c.yaml", "--receiver", "file_push8",
                                 "--processed-db", "sqlite:///x.db"])
    assert (args.config, args.machine, args.processed_db) == ("c.yaml", "file_push8", "sqlite:///x.db")
    assert args.consume_role.command == role


def test_consume_needs_the_receiver():
    with pytest.raises(SystemExit):
        _parser().parse_args(["consume", "file-pull", "--config", "c.yaml"])


def test_default_processed_db_is_named_after_the_service():
    role = next(r for r in consume.ROLES if r.command == "file-push")
    assert consume.processed_db_url(role.service_name("file_push8"), None) == (
        "sqlite:///file_push.file_push8.processed.db"
    )


def test_unknown_receiver_exits_2_naming_the_known_ones(capsys):
    args = _parser().parse_args(["consume", "file-pull", "--config", str(EXAMPLE), "--receiver", "nope"])
    assert args.func(args) == 2
    err = capsys.readouterr().err
    assert "receivers.nope: no such version receiver (known: file_push8)" in err
