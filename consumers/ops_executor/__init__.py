"""ops_executor: runs hot updates on the ops-manager machine (game servers over a host runner, CDN dirs).

Bound to its projects' *update requested*, *batch confirmed* and *update abort requested*
events; reports *update started*, one *IP finished* or *CDN dir finished* per target, *batch
finished* per batch of a rolled-out update, and *update completed*, with the seed's semantics
(docs/rollout.md: batches, go-aheads, aborts).
"""

from pathlib import Path

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
"""This package's Alembic branch ("ops_executor"), registered in pyproject's ``hotupdate.migrations`` entry points."""
