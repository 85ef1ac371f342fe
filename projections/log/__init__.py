"""The event log: every event the projection took, in order, hash-chained. Start here.

- :mod:`projections.log.chain`: how a row's hash is made, and :class:`Chain`, the one walk that
  checks rows link up (verify, export, re-publish and rebuild all use it);
- :mod:`projections.log.store`: the log in the database: the head and its lock, appending,
  reading rows back in chunks, verifying the whole log;
- :mod:`projections.log.export`: slices of the log as JSON Lines files, and verifying such a file;
- :mod:`projections.log.republish`: sending a slice to the bus again, marked as replayed.
"""

from projections.log.chain import (
    AT,
    CHAIN_COLUMNS,
    LOG_COLUMNS,
    Chain,
    ChainRow,
    chain_hash,
    columns_problem,
    row_problem,
)
from projections.log.store import (
    HEAD_ID,
    Head,
    VerifyResult,
    append,
    describe_publishers,
    lock_head,
    log_row,
    read_head,
    read_rows,
    store_head,
    verify,
    verify_rows,
)

__all__ = [
    "AT", "CHAIN_COLUMNS", "HEAD_ID", "LOG_COLUMNS", "Chain", "ChainRow", "Head", "VerifyResult", "append",
    "chain_hash", "columns_problem", "describe_publishers", "lock_head", "log_row", "read_head", "read_rows",
    "row_problem", "store_head", "verify", "verify_rows",
]
