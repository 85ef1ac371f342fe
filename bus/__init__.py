"""The only package that knows AMQP: envelope, catalogue, topology, publishing, consuming."""

from pathlib import Path

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
"""This package's Alembic branch ("bus"), registered in pyproject's ``hotupdate.migrations`` entry points."""
