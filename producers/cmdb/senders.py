"""Who may report on an update: the receiver of its project and the ops manager it was sent to.

The CMDB acts on what these reports say (an update ``succeeded``), so it takes them only from
the broker user that could truthfully send them: ``files.pulled`` / ``pull.failed`` from a
file_pull user of a receiver serving the update's project, ``files.pushed`` / ``push.failed``
from a file_push user of one, and everything the executor reports from
``component_user("ops_executor", <the update's ops manager>)`` (recorded when it was pushed,
from the project's rsync targets). The user is the delivery's ``user_id``, which RabbitMQ
verified (``Incoming.publisher``). Anything else is refused (parked with the reason), and
the update is left as it was.

With ``broker.shared_user`` (development: everything logs in as one user) the broker cannot
tell the components apart, so this check is skipped; the chain check of
:mod:`producers.cmdb.process_manager` applies in every mode.
"""

from __future__ import annotations

from dataclasses import dataclass

from bus.consumer import Reject
from bus.contract.envelope import Envelope
from bus.identity import component_user, instances_serving
from domain.config import HotupdateConfig
from producers.cmdb.database import CmdbDatabase
from producers.cmdb.models import HotUpdate

_FROM_FILE_PULL = frozenset({"files.pulled", "pull.failed"})
_FROM_FILE_PUSH = frozenset({"files.pushed", "push.failed"})


def expected_senders(config: HotupdateConfig, event_name: str, project: str, ops_manager: str | None) -> frozenset[str]:
    """The broker users that may send ``event_name`` about an update of ``project`` sent to ``ops_manager``."""
    if event_name in _FROM_FILE_PULL:
        return frozenset(instances_serving(config, "file_pull", project))
    if event_name in _FROM_FILE_PUSH:
        return frozenset(instances_serving(config, "file_push", project))
    # Everything else the CMDB reacts to is the executor's report on the update it was sent.
    return frozenset({component_user("ops_executor", ops_manager)}) if ops_manager else frozenset()


def sender_problem(config: HotupdateConfig, envelope: Envelope, publisher: str, row: HotUpdate) -> str | None:
    """None if ``publisher`` may report ``envelope`` about ``row`` (or in shared-user mode), else why not."""
    if config.broker.shared_user is not None:
        return None
    allowed = expected_senders(config, envelope.event_name, row.project, row.ops_manager)
    if publisher in allowed:
        return None
    who = ", ".join(sorted(allowed)) or "nobody (no receiver serves the project, or no ops manager was chosen)"
    sender = repr(publisher) if publisher else "a publisher that set no user_id"
    return f"sender: {envelope.type} {envelope.id} about update {row.id} came from {sender}; only {who} may report it"


@dataclass(frozen=True)
class Senders:
    """The sender check over the CMDB's database, run before a process-manager handler."""

    config: HotupdateConfig
    database: CmdbDatabase

    def check(self, envelope: Envelope, publisher: str) -> None:
        """Raise :class:`bus.consumer.Reject` (parked with the reason) if ``publisher`` may not report this."""
        if self.config.broker.shared_user is not None:
            return
        with self.database.transaction() as session:
            row = session.get(HotUpdate, envelope.updateid)
            # An unknown update: the handler logs and ignores it; nothing of the CMDB's changes.
            problem = None if row is None else sender_problem(self.config, envelope, publisher, row)
        if problem:
            raise Reject(problem)
