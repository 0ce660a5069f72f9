"""The plugin in a kernel: services, health, config, the purge task, failures."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from sira_storage_sqlite import SCHEMA_VERSION, SQLiteStorage, SQLiteStoragePlugin

from sira_kernel.storage import AuditStore, KeyStore, SessionStore, Tenant, UsageStore
from sira_kernel.testing import make_kernel

PLUGIN_ID = "storage-sqlite"


def kernel_with(section: dict[str, Any], **kernel_section: Any) -> Any:
    config: dict[str, Any] = {"plugins": {PLUGIN_ID: section}}
    if kernel_section:
        config["kernel"] = kernel_section
    return make_kernel({PLUGIN_ID: SQLiteStoragePlugin}, config)


def state_of(kernel: Any) -> tuple[str, str | None]:
    [info] = [p for p in kernel.plugins.infos() if p.id == PLUGIN_ID]
    return info.state, info.reason


@pytest.mark.anyio
async def test_registers_the_four_services_with_health(tmp_path: Path) -> None:
    path = tmp_path / "sira.db"
    async with kernel_with({"path": str(path)}) as kernel:
        assert state_of(kernel) == ("active", None)
        storage = kernel.services.get(KeyStore)
        assert isinstance(storage, SQLiteStorage)
        for interface in (UsageStore, AuditStore, SessionStore):
            assert kernel.services.get(interface) is storage
            assert kernel.services.owner_of(interface) == PLUGIN_ID
        health = {s.interface: s for s in await kernel.services.health()}
        assert set(health) == {"KeyStore", "UsageStore", "AuditStore", "SessionStore"}
        assert all(s.healthy and s.owner == PLUGIN_ID for s in health.values())
        await storage.create_tenant(Tenant(id="t", name="acme", created_at=1.0))
    # stopped: the connections are closed and the data is in the file
    assert not await storage.healthy()
    assert [t for t in threading.enumerate() if t.name.startswith("sira-sqlite")] == []
    with sqlite3.connect(path) as connection:
        assert connection.execute("SELECT name FROM tenants").fetchall() == [("acme",)]
    connection.close()


@pytest.mark.anyio
async def test_default_path_is_in_the_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    async with kernel_with({}, data_dir="state/sira") as kernel:
        assert state_of(kernel) == ("active", None)
        assert kernel.services.get(KeyStore).path == str(tmp_path / "state" / "sira" / "sira.db")
    assert (tmp_path / "state" / "sira" / "sira.db").is_file()


@pytest.mark.anyio
async def test_in_memory() -> None:
    async with kernel_with({"path": ":memory:"}) as kernel:
        keys = kernel.services.get(KeyStore)
        await keys.create_tenant(Tenant(id="t", name="acme", created_at=1.0))
        assert [t.id for t in await keys.list_tenants()] == ["t"]


@pytest.mark.anyio
async def test_a_newer_schema_fails_the_plugin_with_a_clear_reason(tmp_path: Path) -> None:
    path = tmp_path / "sira.db"
    async with SQLiteStorage(path):
        pass
    with sqlite3.connect(path) as connection:
        connection.execute("INSERT INTO schema_version VALUES (?, ?)", (SCHEMA_VERSION + 5, time.time()))
    connection.close()
    async with kernel_with({"path": str(path)}) as kernel:
        state, reason = state_of(kernel)
        assert state == "failed"
        assert reason is not None
        assert "SchemaVersionError" in reason and f"schema version {SCHEMA_VERSION + 5}" in reason
        assert "upgrade" in reason
        assert kernel.services.find(KeyStore) is None


@pytest.mark.anyio
async def test_two_kernels_start_together_on_one_new_file(tmp_path: Path) -> None:
    """Two workers of ``sira serve`` starting at once: both migrate-or-wait, both serve."""
    path = str(tmp_path / "sira.db")
    kernels = [kernel_with({"path": path}), kernel_with({"path": path})]
    running: list[Any] = []
    stop = anyio.Event()

    async def serve(kernel: Any) -> None:
        async with kernel:
            running.append(kernel)
            await stop.wait()

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for kernel in kernels:
                tg.start_soon(serve, kernel)
            while len(running) < 2:
                await anyio.sleep(0.01)
            try:
                assert [state_of(k) for k in kernels] == [("active", None)] * 2
                stores = [k.services.get(KeyStore) for k in kernels]
                assert sorted(s.migrated_from for s in stores) == [0, SCHEMA_VERSION]
                await stores[0].create_tenant(Tenant(id="t", name="acme", created_at=1.0))
                assert await stores[1].get_tenant("t") is not None
            finally:
                stop.set()


@pytest.mark.anyio
async def test_expired_sessions_are_purged_in_the_background(tmp_path: Path) -> None:
    async with kernel_with({"path": str(tmp_path / "sira.db"), "session_purge_interval": 0.05}) as kernel:
        storage = kernel.services.get(SessionStore)
        assert isinstance(storage, SQLiteStorage)
        await storage.put_session("short", b"x", 0.01)
        await storage.put_session("long", b"y", 60)

        async def stored_keys() -> list[str]:
            rows = await storage._db.read(lambda c: c.execute("SELECT key FROM sessions").fetchall())
            return [row[0] for row in rows]

        with anyio.fail_after(5):
            while await stored_keys() != ["long"]:
                await anyio.sleep(0.02)


@pytest.mark.anyio
@pytest.mark.parametrize(
    "section", [{"busy_timeout_ms": -1}, {"session_purge_interval": 0}, {"path": 3}, {"unknown": True}]
)
async def test_invalid_config_fails_the_plugin(section: dict[str, Any]) -> None:
    async with kernel_with(section) as kernel:
        state, reason = state_of(kernel)
        assert state == "failed" and reason


@pytest.mark.anyio
async def test_unreadable_location_fails_the_plugin(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    async with kernel_with({"path": str(blocker / "sira.db")}) as kernel:
        state, reason = state_of(kernel)
        assert state == "failed" and reason and "lifespan start failed" in reason
