"""The projection: every event kept in a hash-chained log, and the status view the dashboard reads."""

from pathlib import Path

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
"""This package's Alembic branch ("projection"), registered in pyproject's ``hotupdate.migrations`` entry points."""
