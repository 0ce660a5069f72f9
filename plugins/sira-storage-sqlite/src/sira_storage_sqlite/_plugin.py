"""The ``storage-sqlite`` plugin: opens the store in its lifespan and registers it four times."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import anyio

from sira_kernel import PluginContext, hookimpl
from sira_kernel.registrations import ServiceRegistrar
from sira_kernel.storage import AuditStore, KeyStore, SessionStore, UsageStore

from ._config import SQLiteConfig, database_path
from ._database import MEMORY
from ._store import SQLiteStorage

__all__ = ["SQLiteStoragePlugin"]


class SQLiteStoragePlugin:
    """Keys, usage, audit and sessions in one SQLite file: the embedded default store."""

    sira_api = 1
    Config = SQLiteConfig
    provides = ("KeyStore", "UsageStore", "AuditStore", "SessionStore")

    def __init__(self, config: SQLiteConfig) -> None:
        self.config = config
        self.storage: SQLiteStorage | None = None

    @hookimpl
    def sira_lifespan(self, context: PluginContext) -> AbstractAsyncContextManager[None]:
        return self._lifespan(context)

    @asynccontextmanager
    async def _lifespan(self, context: PluginContext) -> AsyncIterator[None]:
        path = database_path(self.config, context.config)
        if path != MEMORY:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        storage = SQLiteStorage(path, busy_timeout_ms=self.config.busy_timeout_ms)
        await storage.open()  # raises SchemaVersionError on a newer database: the plugin fails
        try:
            if storage.migrated_from != storage.schema_version:
                context.log.info(
                    "storage.migrated", path=path, from_version=storage.migrated_from, to_version=storage.schema_version
                )
            self.storage = storage
            context.start_task(self._purge_sessions, context, storage, name="purge-sessions")
            yield
        finally:
            self.storage = None
            await storage.aclose()

    async def _purge_sessions(self, context: PluginContext, storage: SQLiteStorage) -> None:
        while True:
            await anyio.sleep(self.config.session_purge_interval)
            try:
                purged = await storage.purge_expired_sessions()
            except Exception as exc:  # a busy database now is no reason to stop purging later
                context.log.warning("storage.purge_failed", error=type(exc).__name__)
                continue
            if purged:
                context.log.debug("storage.sessions_purged", count=purged)

    @hookimpl
    def sira_register_services(self, register: ServiceRegistrar) -> None:
        storage = self.storage
        assert storage is not None, "registration hooks run inside the lifespan"
        for interface in (KeyStore, UsageStore, AuditStore, SessionStore):
            register(interface, storage, health=storage.healthy)
