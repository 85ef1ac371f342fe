"""Per-team broker permissions: a team's user may publish only routing keys of its projects.

RabbitMQ allows every routing key to a user with no topic permission on an exchange, so
granting always writes one. The user gets no configure or read rights, and write only on
the events exchange. Applied with ``rabbitmqctl`` on the broker's node.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from bus.topology import Topology

_WORD = re.compile(r"^[a-z0-9_]+$")


class GrantError(RuntimeError):
    """rabbitmqctl refused or failed."""


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
    """The permissions that let ``user`` publish events of ``projects`` and nothing else."""
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
        configure="^$",
        write=f"^{re.escape(topology.events_exchange)}$",
        read="^$",
        topic_write=f"^({alternatives})\\.",
        topic_read="^$",
    )


def apply_grant(grant: Grant, *, password: str | None = None, ctl: Sequence[str] | None = None,
                topology: Topology | None = None) -> None:
    """Create the user when a password is given, then set its permissions and topic permissions."""
    topology = topology or Topology()
    base = list(ctl or [shutil.which("rabbitmqctl") or "rabbitmqctl"])

    def run(*args: str) -> None:
        out = subprocess.run([*base, *args], capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise GrantError(f"rabbitmqctl {args[0]} failed: {(out.stderr or out.stdout).strip()}")

    if password is not None:
        users = subprocess.run([*base, "list_users", "--quiet"], capture_output=True, text=True, timeout=60)
        if not any(line.split("\t")[0] == grant.user for line in users.stdout.splitlines()):
            run("add_user", grant.user, password)
        else:
            run("change_password", grant.user, password)
    run("set_permissions", "-p", grant.vhost, grant.user, grant.configure, grant.write, grant.read)
    run("set_topic_permissions", "-p", grant.vhost, grant.user, topology.events_exchange,
        grant.topic_write, grant.topic_read)
