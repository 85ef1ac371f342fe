"""Rebuilding the status view from the event log, in another database. Start here.

- :mod:`projections.rebuild.run`: :func:`rebuild`, the log walked, copied and folded window by
  window with the live projection's fold (also up to a position or a time: the view as it was);
- :mod:`projections.rebuild.window`: one window walked, folded into plain rows, written (what both
  ways of running share);
- :mod:`projections.rebuild.reader`: a long rebuild's reader process (it folds, this one writes);
- :mod:`projections.rebuild.target`: the database written: refused unless empty, set up and settled.
"""

from projections.rebuild.run import READER_FROM, WINDOW, RebuildResult, SourceLogBroken, Unapplied, rebuild
from projections.rebuild.target import RebuildError, TargetNotEmpty, same_database

__all__ = ["READER_FROM", "WINDOW", "RebuildError", "RebuildResult", "SourceLogBroken", "TargetNotEmpty",
           "Unapplied", "rebuild", "same_database"]
