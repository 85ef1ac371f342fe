"""The bus: its message contract (bus.contract, no AMQP) and the transport, the only code that knows AMQP."""

from pathlib import Path

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
"""This package's Alembic branch ("bus"), registered in pyproject's ``hotupdate.migrations`` entry points."""
