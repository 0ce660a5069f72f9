"""``SQLiteStorage``: one object implementing KeyStore, UsageStore, AuditStore and SessionStore."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from ._audit import AuditTables
from ._database import MEMORY, Database
from ._keys import KeyTables
from ._schema import SCHEMA_VERSION
from ._sessions import SessionTables
from ._usage import UsageTables

__all__ = ["SQLiteStorage"]


class SQLiteStorage(KeyTables, UsageTables, AuditTables, SessionTables):
    """Every storage service of Sira in one SQLite file (or ``":memory:"``).

    ``async with SQLiteStorage(path) as storage:`` opens the file (creating it), migrates the schema
    and closes every connection on exit. Usable outside the kernel (tools, tests)::

        async with SQLiteStorage("sira.db") as storage:
            key = await storage.find_key_by_hash(digest)
    """

    def __init__(
        self, path: str | os.PathLike[str] = MEMORY, *, busy_timeout_ms: int = 5000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = os.fspath(path)
        self.clock = clock
        """Wall-clock time for session expiry (replaceable in tests)."""
        self._db = Database(self.path, busy_timeout_ms)

    @property
    def migrated_from(self) -> int | None:
        """The schema version the database had when opened (0: created now); None before opening."""
        return self._db.migrated_from

    schema_version = SCHEMA_VERSION
    """The schema version this code writes."""

    async def open(self) -> SQLiteStorage:
        await self._db.open()
        return self

    async def aclose(self) -> None:
        await self._db.close()

    async def __aenter__(self) -> SQLiteStorage:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def healthy(self) -> bool:
        """Health check: both connections answer a trivial query."""
        if not self._db.alive:
            return False
        await self._db.read(lambda c: c.execute("SELECT 1").fetchall())
        return True

    def __repr__(self) -> str:
        return f"SQLiteStorage({self.path!r})"
