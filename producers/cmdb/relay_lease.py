"""Which CMDB instance's outbox relay publishes, when several share one PostgreSQL database.

One relay at a time, not one per row: the outbox is published in write order (a ``pull.requested``
before the ``push.requested`` it leads to), which rows claimed in parallel (``SKIP LOCKED``) would not
keep. The holder is the instance whose dedicated database session holds a PostgreSQL advisory lock;
the others ask again at each poll, and the lock is free as soon as the holder's session ends (its
process dies, or its connection breaks), so another relay takes over within a poll. If a relay loses
the lock mid-batch, the row it was publishing may go out twice, with the same event id: consumers
dedupe it. SQLite is one process's file: its relay always holds the lease.
"""

from __future__ import annotations

import logging

from sqlalchemy import Connection, Engine, text

log = logging.getLogger(__name__)

# The advisory lock's key: any fixed 64-bit number no other lock of this database uses ("huob").
OUTBOX_RELAY_LOCK = 0x6875_6F62


class RelayLease:
    """``held()`` is True while this instance is the one relay that publishes (blocking: call it off the loop)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._shared = engine.dialect.name == "postgresql"
        self._connection: Connection | None = None

    def held(self) -> bool:
        """Whether this relay may publish now: keeps the lock it has, or tries once to take it."""
        if not self._shared:
            return True
        if self._connection is not None:
            try:
                self._connection.exec_driver_sql("SELECT 1")
                self._connection.commit()
                return True
            except Exception as exc:  # the session is gone, and the lock with it
                log.warning("outbox relay lost its database session (%r); the lease is given up", exc)
                self._drop()
        connection = self._engine.connect()
        try:
            got = bool(connection.execute(text("SELECT pg_try_advisory_lock(:key)"),
                                          {"key": OUTBOX_RELAY_LOCK}).scalar())
            connection.commit()  # a session lock outlives the transaction; an idle session holds no snapshot
        except Exception:
            connection.invalidate()
            connection.close()
            raise
        if not got:
            connection.close()
            return False
        log.info("this CMDB's outbox relay now publishes (it holds the relay lease)")
        self._connection = connection
        return True

    def release(self) -> None:
        """Give the lease up (on stop), so another instance's relay takes over at once."""
        if self._connection is None:
            return
        try:
            self._connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": OUTBOX_RELAY_LOCK})
            self._connection.commit()
            self._connection.close()
        except Exception:
            self._drop()
        self._connection = None

    def _drop(self) -> None:
        # Never back into the pool: a pooled session could still hold the lock.
        if self._connection is not None:
            try:
                self._connection.invalidate()
                self._connection.close()
            except Exception as exc:
                log.debug("closing the relay's lost session failed: %r", exc)
        self._connection = None
