"""Broker users and their least privilege, derived from the configuration; applied with ``rabbitmqctl``.

Each component instance and each team tool logs in as its own user (bus/identity.py names them).
What a user may do on the vhost:

- configure: its own service queues only (``<ns>.<service>``, its ``.retry.<ms>ms`` delay tiers, its
  ``.parked`` queue), so it declares them itself; never the shared exchanges, which
  ``hotupdate rabbitmq provision`` declares as the administrator (a component only looks them up);
- write: its own queues (to bind them), the events exchange (to publish), the default exchange (to put
  retry and parked copies in its own queues; the copy carries its own ``user_id``, which other
  services do not believe), the dead-letter and unroutable exchanges (its queues dead-letter into
  the one, the events exchange overflows into the other);
- read: its own queues, and the events and dead-letter exchanges (the sources of its bindings);
- topic permissions on the events exchange: write only the routing keys
  ``<project>.<area>.<event>.v<N>`` of the events :class:`bus.identity.Identity` says it publishes,
  for the projects it serves; nothing for a component that publishes nothing. (RabbitMQ allows every
  routing key to a user with no topic permission on an exchange, so one is always written.)

A team's user has no configure or read rights and writes only the events exchange. Passwords never
appear on a command line: ``rabbitmqctl add_user NAME`` and ``change_password NAME`` read them
from standard input.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import stat
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from bus.history import history_queue
from bus.identity import Identity, component_user, identity_from_config, team_user
from bus.topology import Topology
from domain.config import HotupdateConfig

_WORD = re.compile(r"^[a-z0-9_]+$")
NOTHING = "^$"


class GrantError(RuntimeError):
    """rabbitmqctl refused or failed, or a password file is unsafe."""


@dataclass(frozen=True)
class Grant:
    user: str
    vhost: str
    configure: str
    write: str
    read: str
    topic_write: str
    topic_read: str


def team_grant(user: str, projects: Sequence[str], *, vhost: str = "/", topology: Topology | None = None) -> Grant:
    """Every routing key of ``projects`` (``rabbitmq grant``); ``provision`` grants teams their events only."""
    if not projects:
        raise ValueError("name at least one project")
    for project in projects:
        if not _WORD.fullmatch(project):
            raise ValueError(f"{project!r} is not a project key ([a-z0-9_]+)")
    topology = topology or Topology()
    alternatives = "|".join(sorted(set(projects)))
    return Grant(
        user=user,
        vhost=vhost,
        configure=NOTHING,
        write=f"^{re.escape(topology.events_exchange)}$",
        read=NOTHING,
        topic_write=f"^({alternatives})\\.",
        topic_read=NOTHING,
    )


def routing_keys_pattern(grants: Mapping[str, Iterable[str]]) -> str:
    """A regex matching exactly the routing keys of these (event name → projects), any area and version."""
    parts = sorted(
        f"({'|'.join(sorted(re.escape(p) for p in projects))})\\.[^.]+\\.{re.escape(name)}\\.v[0-9]+"
        for name, projects in grants.items()
        if projects
    )
    return f"^({'|'.join(parts)})$" if parts else NOTHING


def _alternatives(names: Iterable[str]) -> str:
    return f"^({'|'.join(sorted(names))})$"


def service_queues_pattern(services: Sequence[str], topology: Topology, extra: Sequence[str] = ()) -> list[str]:
    """Regex alternatives for each service's queue, delay tiers and parking queue (escaped)."""
    out = [
        f"{re.escape(topology.queue(s))}(\\.retry\\.[0-9]+ms|{re.escape('.parked')})?" for s in services
    ]
    return out + [re.escape(name) for name in extra]


def component_grant(user: str, services: Sequence[str], grants: Mapping[str, Iterable[str]], *, vhost: str,
                    topology: Topology, extra_queues: Sequence[str] = ()) -> Grant:
    """A component's user: its own queues, and publishing the routing keys of ``grants`` (event → projects)."""
    queues = service_queues_pattern(services, topology, extra_queues)
    events, dlx = re.escape(topology.events_exchange), re.escape(topology.dead_letter_exchange)
    return Grant(
        user=user,
        vhost=vhost,
        configure=_alternatives(queues),
        write=_alternatives([*queues, events, dlx, re.escape(topology.unroutable_exchange), r"amq\.default"]),
        read=_alternatives([*queues, events, dlx]),
        topic_write=routing_keys_pattern(grants),
        topic_read=".*",  # binding its own queues by pattern is checked against this
    )


def provision_grants(config: HotupdateConfig, *, vhost: str, topology: Topology | None = None,
                     identity: Identity | None = None) -> list[Grant]:
    """One grant per component instance and per team of ``config``, from the identity table."""
    topology = topology or Topology()
    identity = identity or identity_from_config(config)
    services: dict[str, tuple[str, ...]] = {
        component_user("cmdb"): ("cmdb",),
        component_user("projection"): ("projection",),
        component_user("notifier"): ("notifier",),
    }
    for receiver in config.receivers:
        services[component_user("file_pull", receiver)] = (f"file_pull.{receiver}",)
        services[component_user("file_push", receiver)] = (f"file_push.{receiver}",)
    for manager in config.ops_managers:
        services[component_user("ops_executor", manager)] = (f"ops_executor.{manager}",)
    grants = [
        component_grant(
            user, queues, identity.grants_of(user), vhost=vhost, topology=topology,
            # the projection's optional stream copy of every event (projection run --history-stream)
            extra_queues=(history_queue(topology),) if user == component_user("projection") else (),
        )
        for user, queues in services.items()
    ]
    for team in config.broker.teams:
        user = team_user(team)
        grants.append(Grant(user=user, vhost=vhost, configure=NOTHING,
                            write=f"^{re.escape(topology.events_exchange)}$", read=NOTHING,
                            topic_write=routing_keys_pattern(identity.grants_of(user)), topic_read=NOTHING))
    return grants


class Rabbitmqctl:
    """``rabbitmqctl`` on the broker's node, with secrets on standard input only."""

    def __init__(self, ctl: Sequence[str] | None = None) -> None:
        self.base = list(ctl or [shutil.which("rabbitmqctl") or "rabbitmqctl"])
        self.argv_log: list[list[str]] = []  # every command line run, for review (tests check no secret is in it)

    def run(self, *args: str, stdin: str | None = None) -> str:
        argv = [*self.base, *args]
        self.argv_log.append(argv)
        out = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise GrantError(f"rabbitmqctl {args[0]} failed: {(out.stderr or out.stdout).strip()}")
        return out.stdout

    def json(self, *args: str) -> list[dict[str, object]]:
        text = self.run(*args, "--formatter", "json", "--quiet").strip()
        rows = json.loads(text) if text else []
        return rows if isinstance(rows, list) else []

    def users(self) -> set[str]:
        return {str(row["user"]) for row in self.json("list_users")}

    def add_user(self, user: str, password: str) -> None:
        self.run("add_user", user, stdin=password + "\n")  # no password argument: read from stdin

    def change_password(self, user: str, password: str) -> None:
        self.run("change_password", user, stdin=password + "\n")


def read_password_file(path: Path) -> str:
    """The password in ``path``, which must not be readable by group or others."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise GrantError(f"{path} is readable by others (mode {mode:o}); chmod 600 it")
    password = path.read_text(encoding="utf-8").strip()
    if not password:
        raise GrantError(f"{path} is empty")
    return password


def read_or_create_password(directory: Path, user: str) -> tuple[str, bool]:
    """(password, created): from ``<directory>/<user>.password`` (which must be mode 600), else a new one."""
    path = directory / f"{user}.password"
    if path.exists():
        return read_password_file(path), False
    directory.mkdir(parents=True, exist_ok=True)
    password = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(password + "\n")
    return password, True


def set_password(ctl: Rabbitmqctl, user: str, password: str, exists: bool) -> str:
    """Create ``user`` with ``password``, or change its password; returns what was done."""
    if exists:
        ctl.change_password(user, password)
        return "password changed"
    ctl.add_user(user, password)
    return "created"


def apply_grants(grants: Sequence[Grant], ctl: Rabbitmqctl, *, password_dir: Path | None,
                 topology: Topology | None = None, parallel: int = 4) -> list[str]:
    """Make the broker match ``grants``, changing only what differs; one line per change (empty: nothing to do).

    A user is created when missing, with the password of its file in ``password_dir`` (made, mode
    600, when there is none); an existing user's password is changed only when its file was just made.
    Users are done ``parallel`` at a time: each rabbitmqctl run starts an Erlang VM, seconds apiece.
    """
    topology = topology or Topology()
    existing = ctl.users()
    current: dict[str, tuple[dict[str, tuple[str, ...]], dict[str, tuple[str, ...]]]] = {}
    for vhost in sorted({g.vhost for g in grants}):
        perms: dict[str, tuple[str, ...]] = {str(r["user"]): (str(r["configure"]), str(r["write"]), str(r["read"]))
                 for r in ctl.json("list_permissions", "-p", vhost)}
        topics: dict[str, tuple[str, ...]] = {str(r["user"]): (str(r["write"]), str(r["read"]))
                  for r in ctl.json("list_topic_permissions", "-p", vhost)
                  if r.get("exchange") == topology.events_exchange}
        current[vhost] = (perms, topics)

    def apply(grant: Grant) -> list[str]:
        done: list[str] = []
        perms, topics = current[grant.vhost]
        if password_dir is not None:
            password, created = read_or_create_password(password_dir, grant.user)
            if grant.user not in existing or created:
                done.append(f"{grant.user}: {set_password(ctl, grant.user, password, grant.user in existing)}")
        elif grant.user not in existing:
            raise GrantError(f"{grant.user} does not exist: give a password directory to create it")
        wanted = (grant.configure, grant.write, grant.read)
        if perms.get(grant.user) != wanted:
            ctl.run("set_permissions", "-p", grant.vhost, grant.user, *wanted)
            done.append(f"{grant.user}: permissions on vhost {grant.vhost} set")
        if topics.get(grant.user) != (grant.topic_write, grant.topic_read):
            ctl.run("set_topic_permissions", "-p", grant.vhost, grant.user, topology.events_exchange,
                    grant.topic_write, grant.topic_read)
            done.append(f"{grant.user}: may publish routing keys {grant.topic_write} on {topology.events_exchange}")
        return done

    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        return [line for lines in pool.map(apply, grants) for line in lines]


def apply_grant(grant: Grant, *, password: str | None = None, ctl: Sequence[str] | None = None,
                topology: Topology | None = None) -> None:
    """Create the user (or change its password) when a password is given, then set its permissions."""
    runner = Rabbitmqctl(ctl)
    topology = topology or Topology()
    if password is not None:
        set_password(runner, grant.user, password, grant.user in runner.users())
    runner.run("set_permissions", "-p", grant.vhost, grant.user, grant.configure, grant.write, grant.read)
    runner.run("set_topic_permissions", "-p", grant.vhost, grant.user, topology.events_exchange,
               grant.topic_write, grant.topic_read)
