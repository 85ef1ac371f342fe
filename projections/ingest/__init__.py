"""Taking events into the projection. Start here.

- :mod:`projections.ingest.batch`: :func:`ingest_batch`, a batch of events into the log and the
  view in one transaction (narrowed by halves when something in it fails);
- :mod:`projections.ingest.worker`: the process the projection service hands its batches to
  (its own core, beside the consumer's event loop);
- :mod:`projections.ingest.rejected`: the messages the consumer parked, for the dashboard.
"""

from projections.ingest.batch import ConflictingDuplicate, Outcome, OutcomeStatus, ingest_batch, utcnow
from projections.ingest.rejected import record_rejection

__all__ = ["ConflictingDuplicate", "Outcome", "OutcomeStatus", "ingest_batch", "record_rejection", "utcnow"]
