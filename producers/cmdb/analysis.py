"""Analysis verdicts on an update's batches, as the CMDB shows them.

The ops executor decides (a rollout awaiting analysis goes on with ``pass``, stops on ``fail`` or
silence); the CMDB records the verdict with the batch it judged (``last_batch.analysis`` in
``GET /api/updates/<id>``), so an operator sees why a rollout went on or stopped. Who may send a
verdict is the identity table's (a team granted ``analysis.verdict`` in ``broker.teams``).
"""

from __future__ import annotations

import logging

from bus.contract.events import AnalysisVerdict
from bus.handling import Incoming
from producers.cmdb.database import CmdbDatabase
from producers.cmdb.models import HotUpdate

log = logging.getLogger(__name__)


def on_analysis_verdict(msg: Incoming[AnalysisVerdict], database: CmdbDatabase) -> None:
    """Attach the verdict to the batch it judged (the first one counts); anything else is ignored."""
    env, event = msg.envelope, msg.event
    with database.transaction() as session:
        row = session.get(HotUpdate, env.updateid, with_for_update=True)
        last = dict(row.last_batch or {}) if row is not None else {}
        if row is None or last.get("batch") != event.batch or "analysis" in last:
            log.info("analysis verdict %s on batch %d of update %s: not the batch awaiting one; ignored",
                     env.id, event.batch, env.updateid)
            return
        last["analysis"] = {"verdict": event.verdict, "reason": event.reason, "link": event.link,
                            "analysed_by": event.analysed_by, "event_id": env.id, "publisher": msg.publisher}
        row.last_batch = last
        if event.verdict == "fail":
            row.reason = f"analysis of batch {event.batch} failed ({event.analysed_by}): {event.reason}"
