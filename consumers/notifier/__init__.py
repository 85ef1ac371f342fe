"""The notifier: calls each project's webhooks, signed and retried, when an update completes or fails.

See docs/notifications.md for the configuration, the payload and how to check a signature.
"""

from pathlib import Path

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
"""This package's Alembic branch ("notifier"), registered in pyproject's ``hotupdate.migrations`` entry points."""
