"""``SessionStore`` on SQLite: values with an absolute expiry.

Reads ignore expired rows; :meth:`SessionTables.purge_expired_sessions` deletes them (the plugin
runs it every ``session_purge_interval`` seconds). Expiry uses wall-clock time (``clock``, by
default ``time.time``) because several processes share the rows.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Callable

from ._codec import one
from ._database import Database

__all__ = ["SessionTables"]


class SessionTables:
    """The ``SessionStore`` methods of :class:`~sira_storage_sqlite.SQLiteStorage`."""

    _db: Database
    clock: Callable[[], float]

    async def get_session(self, key: str) -> bytes | None:
        now = self.clock()
        row = await self._db.read(
            lambda c: one(c, "SELECT value FROM sessions WHERE key = ? AND expires_at > ?", (key, now))
        )
        return None if row is None else bytes(row[0])

    async def put_session(self, key: str, value: bytes, ttl_s: float) -> None:
        """Store ``value`` under ``key`` for ``ttl_s`` seconds (replacing any value and expiry)."""
        if not (ttl_s > 0 and math.isfinite(ttl_s)):
            raise ValueError("ttl_s must be a positive number of seconds")
        params = (key, bytes(value), self.clock() + ttl_s)

        def upsert(connection: sqlite3.Connection) -> None:
            connection.execute(
                "INSERT INTO sessions (key, value, expires_at) VALUES (?, ?, ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at",
                params,
            )

        await self._db.write(upsert)

    async def delete_session(self, key: str) -> None:
        """Forget ``key`` (a missing key is not an error: it may just have expired)."""

        def delete(connection: sqlite3.Connection) -> None:
            connection.execute("DELETE FROM sessions WHERE key = ?", (key,))

        await self._db.write(delete)

    async def purge_expired_sessions(self) -> int:
        """Delete every expired session; returns how many."""
        now = self.clock()

        def purge(connection: sqlite3.Connection) -> int:
            return connection.execute("DELETE FROM sessions WHERE expires_at <= ?", (now,)).rowcount

        return await self._db.write(purge)
