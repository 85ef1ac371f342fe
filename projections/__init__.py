"""The projection: every event kept in a hash-chained log, and the status view the dashboard reads.

Rooms (each package's ``__init__`` is where a reader starts): :mod:`projections.log` (the log and
its one chain walk), :mod:`projections.view` (the one fold: pure reducers over rows in memory),
:mod:`projections.ingest` (live batches from the broker), :mod:`projections.rebuild` (the view
rebuilt from the log), :mod:`projections.dashboard` (the web app; it reads :mod:`projections.queries`).
"""

from pathlib import Path

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
"""This package's Alembic branch ("projection"), registered in pyproject's ``hotupdate.migrations`` entry points."""
