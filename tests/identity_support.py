"""A fresh vhost whose broker users are provisioned from a configuration, as `hotupdate rabbitmq provision` does.

Broker users are global to the broker, and engineers share one: every provisioned name carries a
prefix of its own (``bus.identity.USER_PREFIX`` patched for the test), and all are deleted afterwards.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import pytest
import yaml

from bus.identity import component_user, team_user
from bus.permissions import Grant, provision_grants
from cli.main import main as cli_main
from domain.config import HotupdateConfig, load_config
from tests.broker import Broker


def as_user(url: str, user: str, password: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, f"{quote(user, safe='')}:{quote(password, safe='')}@{host}", parts.path, "", ""))


def rig_config(root: Path, amqp_url: str, team: str, *, pairs: int = 1) -> dict[str, Any]:
    """Projects ssss and snqxz; ``pairs`` receivers and ops managers (recv1/ops1 serve ssss, recv2/ops2
    snqxz); one team granted pull requests of ssss."""
    areas = {"hot_server": {"大陆": ["cn"]}, "hot_client": {"大陆": ["cn"]}}
    served = ["ssss", "snqxz"]
    return {
        "amqp_url": amqp_url,
        "broker": {"teams": {team: {"projects": ["ssss"], "events": ["pull.requested"]}}},
        "projects": {key: {"areas": areas, "inventory": {"cn": {
            "servers": {"game": {"127.0.0.1": ["qq_1", "qq_2"]}},
            "cdn": [{"cdn_root_url": "res.ssss.chuangyunet.com", "cdn_dir": "t1"}]}}} for key in ("ssss", "snqxz")},
        "receivers": {
            f"recv{i}": {"projects": [served[i - 1]], "version_root": str(root / f"v{i}"),
                         "backup_root": str(root / f"b{i}")} for i in range(1, pairs + 1)
        },
        "ops_managers": {
            f"ops{i}": {"projects": [served[i - 1]], "incoming_root": str(root / f"in{i}"),
                        "cdn_origin_root": str(root / f"c{i}")} for i in range(1, pairs + 1)
        },
        "cmdb": {"database_url": f"sqlite:///{root / 'cmdb.db'}"},
    }


@dataclass
class Provisioned:
    config: HotupdateConfig
    config_file: Path
    admin_url: str
    passwords: Path
    grants: list[Grant]
    team: str  # the configured team's name

    def password(self, user: str) -> str:
        return (self.passwords / f"{user}.password").read_text(encoding="utf-8").strip()

    def url(self, user: str) -> str:
        return as_user(self.admin_url, user, self.password(user))

    def config_as(self, user: str) -> HotupdateConfig:
        """The configuration as a component on its own machine reads it (HOTUPDATE_AMQP_URL with its login)."""
        return self.config.model_copy(update={"amqp_url": self.url(user)})

    @property
    def team_user(self) -> str:
        return team_user(self.team)

    def component(self, name: str, instance: str = "") -> str:
        return component_user(name, instance)


@contextmanager
def provisioned(
    root: Path, broker: Broker, *, pairs: int = 1, adjust: Callable[[dict[str, Any], str], None] | None = None
) -> Iterator[Provisioned]:
    """A fresh vhost, and `hotupdate rabbitmq provision` run on it; its users and the vhost are deleted afterwards.

    User names get a prefix of their own (``hotupdate`` in production): broker users are global, and
    other tests share the broker. ``adjust(config_dict, team)`` changes the configuration before it is provisioned.
    """
    vhost, amqp_url = broker.new_vhost()
    team = f"tools{uuid.uuid4().hex[:8]}"
    config_file = root / "config.yaml"
    raw = rig_config(root, amqp_url, team, pairs=pairs)
    if adjust is not None:
        adjust(raw, team)
    config_file.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    grants: list[Grant] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("bus.identity.USER_PREFIX", f"hu{uuid.uuid4().hex[:8]}")
        try:
            config = load_config(config_file)
            grants = provision_grants(config, vhost=vhost)
            code = cli_main(["rabbitmq", "provision", "--config", str(config_file), "--password-dir",
                             str(root / "broker-passwords"), "--amqp-url", amqp_url])
            assert code == 0
            yield Provisioned(config, config_file, amqp_url, root / "broker-passwords", grants, team)
        finally:
            for grant in grants:
                with suppress(RuntimeError):  # never made: the provisioning failed before it
                    broker.rabbitmqctl("delete_user", grant.user)
            broker.delete_vhost(vhost)
