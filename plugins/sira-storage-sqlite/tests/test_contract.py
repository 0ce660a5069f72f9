"""sira-storage-sqlite against the storage contract every backend passes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sira_storage_sqlite import SQLiteStorage

from sira_kernel.testing.storage_contract import StorageContract


class TestSQLiteContract(StorageContract):
    @asynccontextmanager
    async def open_storage(self, database: str) -> AsyncIterator[SQLiteStorage]:
        async with SQLiteStorage(database) as storage:
            yield storage
