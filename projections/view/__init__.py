"""The status view: what the dashboard shows of each update, folded from the log's events. Start here.

- :mod:`projections.view.fold`: the one fold, :func:`fold` (events into rows, then derive);
- :mod:`projections.view.reducers`: one pure reducer per event type (:data:`REDUCERS`);
- :mod:`projections.view.rows`: the rows a reducer sees (:class:`ViewRows`), held in memory;
- :mod:`projections.view.order`, :mod:`projections.view.targets`: how reducers order events and
  get or add target rows;
- :mod:`projections.view.derive`: counts, stage and status from an update's rows;
- :mod:`projections.view.store`: reading the rows of the updates a fold touches, writing its changes.

Every reducer is order-independent, so the view does not depend on arrival order: a stage's
time is the earliest event time seen for it, and the stage and status are derived from which
stage times are present; a target's result, or a group of update fields, is overwritten only
by an event later in the update's causal order; sets only grow, and counts are derived from
the rows. So a rebuild of the log in any order gives the same view.
"""

from projections.view.derive import OPTIONAL_STAGES, RELEASE_GROUP, STAGE_FIELDS, STATUSES, derive_stage
from projections.view.fold import ReducerFailed, apply, fold
from projections.view.order import ViewLimitError, order_key
from projections.view.reducers import REDUCERS
from projections.view.rows import Changes, MemoryRows, ViewRows
from projections.view.store import load, snapshot, write

__all__ = [
    "OPTIONAL_STAGES", "REDUCERS", "RELEASE_GROUP", "STAGE_FIELDS", "STATUSES", "Changes", "MemoryRows",
    "ReducerFailed", "ViewLimitError", "ViewRows", "apply", "derive_stage", "fold", "load", "order_key", "snapshot",
    "write",
]
