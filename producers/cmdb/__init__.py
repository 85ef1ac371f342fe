"""The CMDB: operators start and push hot updates; a process manager drives the rest through events."""

from pathlib import Path

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
"""This package's Alembic branch ("cmdb"), registered in pyproject's ``hotupdate.migrations`` entry points."""
