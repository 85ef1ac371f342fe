"""Who may say what on the bus, decided from what the broker verified.

Every component instance and every team tool logs in to RabbitMQ as its own user, and every
publisher sets the AMQP ``user_id`` property to that login; RabbitMQ refuses a publish whose
``user_id`` is not the connection's user. So a delivery's ``user_id`` is the one statement about
its sender that nobody but the broker could have made, and the only one trusted here. The
envelope's ``source`` stays a label for humans.

The table below says which verified user may publish which event type for which project. It is
derived, never written by hand: each event's producing component (the catalogue) and the
instances of that component serving the project (the configuration), plus the teams the
configuration grants events to. The same table drives the broker's topic permissions
(``hotupdate rabbitmq provision``), so the broker and the consumers agree on it.

User names follow one convention (:func:`component_user`, :func:`team_user`), so an operator
reads in ``rabbitmqctl list_users`` which machine a user belongs to.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from bus.contract.envelope import Envelope
from bus.contract.events import CATALOGUE, TEAM_PRODUCER, Event
from domain.config import HotupdateConfig

USER_PREFIX = "hotupdate"
TEAM_PREFIX = "team"

# Components that run once per deployment (all projects) rather than once per machine.
SINGLETON_COMPONENTS = ("cmdb", "projection", "notifier")


def component_user(component: str, instance: str = "") -> str:
    """The broker user of one component instance: ``hotupdate.ops_executor.ops1``, ``hotupdate.cmdb``."""
    return f"{USER_PREFIX}.{component}.{instance}" if instance else f"{USER_PREFIX}.{component}"


def team_user(team: str) -> str:
    """The broker user of another team's tool: ``team.<name>``."""
    return f"{TEAM_PREFIX}.{team}"


@dataclass(frozen=True)
class Identity:
    """Which verified publisher may publish which event names, for which projects."""

    # (event name, project) -> users allowed to publish it
    allowed: Mapping[tuple[str, str], frozenset[str]] = field(default_factory=dict)
    # Development only: every component logs in as this one user (``guest`` on a laptop). Then the
    # broker cannot tell components apart, and this table accepts that user for everything.
    shared_user: str | None = None

    def may_publish(self, user: str, event_name: str, project: str) -> bool:
        if self.shared_user is not None and user == self.shared_user:
            return True
        return user in self.allowed.get((event_name, project), frozenset())

    def problem(self, envelope: Envelope, user: str) -> str | None:
        """None if the verified ``user`` may publish ``envelope``'s type for its project, else why not."""
        if not user:
            return (
                f"identity: {envelope.type} for project {envelope.project!r} carries no verified publisher "
                "(the AMQP user_id property is not set)"
            )
        if self.may_publish(user, envelope.event_name, envelope.project):
            return None
        allowed = sorted(self.allowed.get((envelope.event_name, envelope.project), frozenset()))
        return (
            f"identity: broker user {user!r} may not publish {envelope.type} for project {envelope.project!r} "
            f"(allowed: {', '.join(allowed) or 'nobody'})"
        )

    def users(self) -> frozenset[str]:
        """Every user that may publish anything (the provisioning command creates these)."""
        return frozenset(u for users in self.allowed.values() for u in users)

    def grants_of(self, user: str) -> dict[str, frozenset[str]]:
        """Event name -> projects ``user`` may publish it for."""
        out: dict[str, set[str]] = {}
        for (event_name, project), users in self.allowed.items():
            if user in users:
                out.setdefault(event_name, set()).add(project)
        return {name: frozenset(projects) for name, projects in out.items()}


def instances_serving(config: HotupdateConfig, component: str, project: str) -> list[str]:
    """The broker users of ``component``'s instances that serve ``project``."""
    if component in SINGLETON_COMPONENTS:
        return [component_user(component)]
    if component in ("file_pull", "file_push"):
        return [component_user(component, name) for name, r in config.receivers.items() if project in r.projects]
    if component == "ops_executor":
        return [component_user(component, name) for name, m in config.ops_managers.items() if project in m.projects]
    raise ValueError(f"unknown producing component {component!r}")


def identity_from_config(config: HotupdateConfig, catalogue: Iterable[type[Event]] = CATALOGUE) -> Identity:
    """The table for this configuration: catalogue producers per project, plus the teams' grants.

    An event whose producer is ``"team"`` (an outside tool's, such as *release announced*) has no
    component producer: nobody may publish it unless a team is granted it in ``broker.teams``."""
    table: dict[tuple[str, str], set[str]] = {}
    for model in catalogue:
        if model.producer == TEAM_PRODUCER:  # no component publishes it: only the teams granted it below
            continue
        for project in config.projects:
            table.setdefault((model.event_name, project), set()).update(
                instances_serving(config, model.producer, project)
            )
    for team, grant in config.broker.teams.items():
        for event_name in grant.events:
            for project in grant.projects:
                table.setdefault((event_name, project), set()).add(team_user(team))
    return Identity({key: frozenset(users) for key, users in table.items()}, shared_user=config.broker.shared_user)
