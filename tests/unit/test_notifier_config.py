"""Webhook configuration: URL, one secret, kinds, limits; ``hotupdate consume notifier`` and its defaults."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from pathlib import Path

import pytest
import yaml

from cli import consume
from consumers.notifier.webhooks import WebhookBook, redact_url
from domain.config import NOTIFICATION_KINDS, ConfigError, WebhookConfig, load_config, parse_config

AREAS = {"hot_server": {"大陆": ["cn"]}}
INVENTORY = {"cn": {"servers": {"game": {"127.0.0.1": ["qq_1"]}}}}
SECRET = "0123456789abcdef"


def config_with(*webhooks: Mapping[str, object], notifier: Mapping[str, object] | None = None):
    raw: dict[str, object] = {"projects": {"ssss": {"areas": AREAS, "inventory": INVENTORY,
                                                       "webhooks": [dict(w) for w in webhooks]}}}
    if notifier is not None:
        raw["notifier"] = dict(notifier)
    return parse_config(raw, Path("/etc/hotupdate/config.yaml"))


def test_a_webhook_defaults_to_every_kind_with_bounded_retries():
    (hook,) = config_with({"url": "https://hooks.example.com/h", "secret": SECRET}).projects["ssss"].webhooks
    assert hook.events == list(NOTIFICATION_KINDS) == ["completed", "failed", "aborted", "stalled"]
    assert hook.max_attempts >= 1 and hook.timeout_seconds > 0 and hook.backoff_seconds > 0
    assert hook.read_secret() == SECRET.encode()
    assert SECRET not in repr(hook)


def test_the_notifier_state_defaults_to_a_sqlite_file_and_can_be_set():
    assert config_with().notifier.state_url == "sqlite:///notifier.db"
    assert config_with(notifier={"state_url": "postgresql://n@db/notifier"}).notifier.state_url == (
        "postgresql://n@db/notifier"
    )


@pytest.mark.parametrize(("webhook", "message"), [
    ({"url": "ftp://hooks.example.com/h", "secret": SECRET}, "http:// or https://"),
    ({"url": "https:///no-host", "secret": SECRET}, "http:// or https://"),
    ({"url": "https://h.example.com/h"}, "exactly one of secret or secret_file"),
    ({"url": "https://h.example.com/h", "secret": SECRET, "secret_file": "s"}, "exactly one of secret"),
    ({"url": "https://h.example.com/h", "secret": "short"}, "at least 16"),
    ({"url": "https://h.example.com/h", "secret": SECRET, "events": ["done"]}, "webhooks.0.events.0"),
    ({"url": "https://h.example.com/h", "secret": SECRET, "max_attempts": 0}, "max_attempts"),
])
def test_a_wrong_webhook_is_refused_naming_the_key(webhook, message):
    with pytest.raises(ConfigError, match=message):
        config_with(webhook)


def test_the_same_url_twice_in_a_project_is_refused():
    hook = {"url": "https://h.example.com/h", "secret": SECRET}
    with pytest.raises(ConfigError, match="same url is listed twice"):
        config_with(hook, hook)


def test_a_secret_file_is_relative_to_the_config_and_read_stripped(tmp_path):
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets/hook").write_text("  from-a-file-0123456789\n")
    os.chmod(tmp_path / "secrets/hook", 0o600)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"projects": {"ssss": {
        "areas": AREAS, "inventory": INVENTORY, "webhooks": [
        {"url": "https://h.example.com/h", "secret_file": "secrets/hook"}]}}}, allow_unicode=True))
    config = load_config(tmp_path / "config.yaml")
    (hook,) = config.projects["ssss"].webhooks
    assert hook.secret_file == tmp_path / "secrets/hook"
    (endpoint,) = WebhookBook.from_config(config).for_project("ssss")
    assert endpoint.secret == b"from-a-file-0123456789"


def test_a_missing_or_short_secret_file_stops_the_notifier_naming_the_webhook(tmp_path):
    missing = config_with({"url": "https://h.example.com/h", "secret_file": str(tmp_path / "nope")})
    with pytest.raises(ConfigError, match=r"projects\.ssss\.webhooks\.0\.secret_file: cannot read"):
        WebhookBook.from_config(missing)
    (tmp_path / "short").write_text("tiny\n")
    short = config_with({"url": "https://h.example.com/h", "secret_file": str(tmp_path / "short")})
    with pytest.raises(ConfigError, match=r"projects\.ssss\.webhooks\.0: the secret must be at least 16 bytes"):
        WebhookBook.from_config(short)


def test_logs_and_listings_show_a_webhook_without_its_path_or_credentials():
    shown = redact_url("https://user:pw@hooks.slack.example.com:8443/services/T000/B000/XXXXSECRET?x=1")
    assert shown.startswith("https://hooks.slack.example.com:8443/… #")
    assert "XXXXSECRET" not in shown and "pw" not in shown
    assert redact_url("https://a.example.com/one") != redact_url("https://a.example.com/two")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hotupdate")
    consume.register(parser.add_subparsers(dest="command", required=True))
    return parser


def test_consume_notifier_needs_no_name_and_its_service_is_notifier():
    args = _parser().parse_args(["consume", "notifier", "--config", "c.yaml"])
    role = args.consume_role
    assert (args.machine, role.service_name(args.machine)) == ("notifier", "notifier")
    assert consume.processed_db_url(role.service_name(args.machine), None) == "sqlite:///notifier.processed.db"
    other = _parser().parse_args(["consume", "notifier", "--config", "c.yaml", "--name", "staging"])
    assert role.service_name(other.machine) == "notifier.staging"


def test_consume_notifier_without_webhooks_exits_2_saying_so(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"projects": {"ssss": {"areas": AREAS, "inventory": INVENTORY}}},
                                                   allow_unicode=True))
    args = _parser().parse_args(["consume", "notifier", "--config", str(tmp_path / "c.yaml")])
    assert args.func(args) == 2
    assert "no project has webhooks" in capsys.readouterr().err


def test_webhook_config_is_frozen():
    hook = WebhookConfig(url="https://h.example.com/h", secret=SECRET)
    with pytest.raises(ValueError, match="frozen"):
        hook.url = "https://elsewhere.example.com/"  # type: ignore[misc]
