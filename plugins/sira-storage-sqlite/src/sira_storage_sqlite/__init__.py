"""sira-storage-sqlite (plugin id ``storage-sqlite``): Sira's embedded default store.

One SQLite file (WAL) holds tenants, teams, users and virtual keys (``KeyStore``), the usage ledger
(``UsageStore``), the audit log (``AuditStore``) and sessions (``SessionStore``). The plugin opens
it in its lifespan, migrates the schema, and registers one :class:`SQLiteStorage` under all four
interfaces (name ``"default"``); :class:`SQLiteStorage` also works on its own::

    async with SQLiteStorage("sira.db") as storage:
        await storage.write_usage(records)

Config (``[plugins.storage-sqlite]``): ``path``, ``busy_timeout_ms``, ``session_purge_interval``
(:class:`SQLiteConfig`; the README documents each).
"""

from __future__ import annotations

from ._config import SQLiteConfig, database_path
from ._plugin import SQLiteStoragePlugin
from ._schema import SCHEMA_VERSION, SchemaVersionError
from ._store import SQLiteStorage

__all__ = [
    "SCHEMA_VERSION",
    "SQLiteConfig",
    "SQLiteStorage",
    "SQLiteStoragePlugin",
    "SchemaVersionError",
    "database_path",
]
