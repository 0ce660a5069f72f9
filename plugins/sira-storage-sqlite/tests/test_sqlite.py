"""What only SQLite has: migrations, pragmas, indexes, connection threads, the file's location."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from sira_storage_sqlite import SCHEMA_VERSION, SchemaVersionError, SQLiteConfig, SQLiteStorage, database_path
from sira_storage_sqlite._keys import _KEY
from sira_storage_sqlite._schema import MIGRATIONS
from sira_storage_sqlite._usage import _SELECT, SCOPES, STORED_FIELDS

from sira_kernel.events import UsageRecord
from sira_kernel.storage import AuditEntry, Tenant, UsageFilter
from sira_kernel.testing import make_config
from sira_kernel.testing.storage_contract import make_key


def versions(path: Path) -> list[int]:
    with sqlite3.connect(path) as connection:
        rows = connection.execute("SELECT version FROM schema_version ORDER BY version").fetchall()
    connection.close()
    return [row[0] for row in rows]


def store_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("sira-sqlite")]


@pytest.fixture(autouse=True)
def no_thread_left() -> Any:
    yield
    assert store_threads() == []


# -- migrations -----------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_migrates_from_scratch_then_reopens_without_migrating(tmp_path: Path) -> None:
    path = tmp_path / "sira.db"
    async with SQLiteStorage(path) as storage:
        assert storage.migrated_from == 0
        await storage.create_tenant(Tenant(id="t", name="t", created_at=1.0))
    assert versions(path) == list(range(1, SCHEMA_VERSION + 1))
    async with SQLiteStorage(path) as storage:
        assert storage.migrated_from == SCHEMA_VERSION
        assert [t.id for t in await storage.list_tenants()] == ["t"]
    assert versions(path) == list(range(1, SCHEMA_VERSION + 1))
    assert SCHEMA_VERSION == len(MIGRATIONS)


@pytest.mark.anyio
async def test_refuses_a_database_from_a_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "sira.db"
    async with SQLiteStorage(path):
        pass
    with sqlite3.connect(path) as connection:
        connection.execute("INSERT INTO schema_version VALUES (?, ?)", (SCHEMA_VERSION + 1, time.time()))
    connection.close()
    storage = SQLiteStorage(path)
    with pytest.raises(SchemaVersionError, match=f"schema version {SCHEMA_VERSION + 1}, newer than"):
        await storage.open()
    assert versions(path) == list(range(1, SCHEMA_VERSION + 2))  # untouched
    assert store_threads() == []  # the failed open closed its connection
    with pytest.raises(RuntimeError):
        await storage.get_tenant("t")


@pytest.mark.anyio
async def test_stores_opening_one_new_file_at_once_migrate_it_once(tmp_path: Path) -> None:
    path = tmp_path / "sira.db"
    stores = [SQLiteStorage(path) for _ in range(4)]
    async with anyio.create_task_group() as tg:
        for storage in stores:
            tg.start_soon(storage.open)
    try:
        assert sorted(s.migrated_from or 0 for s in stores) == [0] + [SCHEMA_VERSION] * 3
        assert versions(path) == list(range(1, SCHEMA_VERSION + 1))
    finally:
        for storage in stores:
            await storage.aclose()


_WORKER = textwrap.dedent(
    """
    import asyncio, sys, time
    from sira_storage_sqlite import SQLiteStorage

    async def main():
        time.sleep(max(0.0, float(sys.argv[2]) - time.time()))  # start together
        async with SQLiteStorage(sys.argv[1]) as storage:
            await storage.write_usage([])
            print(storage.migrated_from)

    asyncio.run(main())
    """
)


def test_worker_processes_starting_together_migrate_once(tmp_path: Path) -> None:
    path = tmp_path / "sira.db"
    start = time.time() + 1.0
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, str(path), str(start)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    outputs = [worker.communicate(timeout=60) for worker in workers]
    assert [w.returncode for w in workers] == [0] * 4, [err for _, err in outputs]
    assert sorted(int(out) for out, _ in outputs) == [0] + [SCHEMA_VERSION] * 3
    assert versions(path) == list(range(1, SCHEMA_VERSION + 1))


# -- connections ----------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_pragmas(tmp_path: Path) -> None:
    path = tmp_path / "sira.db"
    pragmas = ("journal_mode", "synchronous", "foreign_keys", "busy_timeout", "query_only")

    def read_pragmas(connection: sqlite3.Connection) -> dict[str, Any]:
        return {name: connection.execute("PRAGMA " + name).fetchall()[0][0] for name in pragmas}

    async with SQLiteStorage(path, busy_timeout_ms=1234) as storage:
        writer = await storage._db.write(read_pragmas)
        reader = await storage._db.read(read_pragmas)
    common = {"journal_mode": "wal", "synchronous": 1, "foreign_keys": 1, "busy_timeout": 1234}
    assert writer == {**common, "query_only": 0}
    assert reader == {**common, "query_only": 1}
    with sqlite3.connect(path) as connection:  # WAL is a property of the file
        assert connection.execute("PRAGMA journal_mode").fetchall() == [("wal",)]
    connection.close()


async def query_plan(storage: SQLiteStorage, sql: str, params: tuple[Any, ...]) -> str:
    rows = await storage._db.read(lambda c: c.execute("EXPLAIN QUERY PLAN " + sql, params).fetchall())
    return " / ".join(row[3] for row in rows)


@pytest.mark.anyio
async def test_hot_queries_use_indexes() -> None:
    queries = {
        "find_key_by_hash": (_KEY + " WHERE key_hash = ?", ("h",)),
        "usage of a tenant": (_SELECT + " WHERE timestamp >= ? AND tenant = ? ORDER BY timestamp DESC, id DESC"
                              " LIMIT ?", (0.0, "t", 10)),
        "changes_since": ("SELECT key_id FROM key_changes WHERE version > ? ORDER BY version, key_id", (0,)),
        "session": ("SELECT value FROM sessions WHERE key = ? AND expires_at > ?", ("k", 0.0)),
    }
    async with SQLiteStorage() as storage:
        for name, (sql, params) in queries.items():
            plan = await query_plan(storage, sql, params)
            assert plan.startswith("SEARCH") and "INDEX" in plan, f"{name}: {plan}"
        assert "(key_hash=?)" in await query_plan(storage, _KEY + " WHERE key_hash = ?", ("h",))
        for scope, sql in SCOPES.items():  # spend reads the index alone
            plan = await query_plan(storage, sql, ("x", 0.0))
            assert plan.startswith("SEARCH") and "COVERING INDEX" in plan, f"spend by {scope}: {plan}"


def test_every_usage_record_field_has_a_column() -> None:
    assert STORED_FIELDS == set(UsageRecord.__struct_fields__)


@pytest.mark.anyio
async def test_audit_log_is_append_only_in_the_database(tmp_path: Path) -> None:
    path = tmp_path / "sira.db"
    async with SQLiteStorage(path) as storage:
        await storage.write_audit(AuditEntry(id="a", at=1.0, actor="admin", action="x", target_type="key"))
    with sqlite3.connect(path) as connection:
        for statement in ("UPDATE audit_log SET actor = 'mallory'", "DELETE FROM audit_log"):
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                connection.execute(statement)
        assert connection.execute("SELECT actor FROM audit_log").fetchall() == [("admin",)]
    connection.close()


@pytest.mark.anyio
async def test_memory_database() -> None:
    async with SQLiteStorage(":memory:") as storage:
        tenant = await storage.create_tenant(Tenant(id="", name="t", created_at=1.0))
        key = await storage.create_key(make_key(tenant.id, "h"))
        assert await storage.find_key_by_hash("h") == key
        assert await storage.changes_since(0) == (1, [key.id])
        assert await storage.healthy()
    assert not await storage.healthy()


@pytest.mark.anyio
async def test_purge_expired_sessions() -> None:
    now = [1000.0]
    async with SQLiteStorage(clock=lambda: now[0]) as storage:
        await storage.put_session("a", b"1", 10)
        await storage.put_session("b", b"2", 100)
        assert await storage.purge_expired_sessions() == 0
        now[0] += 10  # "a" expires exactly now
        assert await storage.get_session("a") is None
        assert await storage.purge_expired_sessions() == 1
        assert await storage._db.read(lambda c: c.execute("SELECT key FROM sessions").fetchall()) == [("b",)]


@pytest.mark.anyio
async def test_a_write_waits_for_another_process_lock(tmp_path: Path) -> None:
    path = tmp_path / "sira.db"
    async with SQLiteStorage(path, busy_timeout_ms=5000) as storage:
        await storage.create_tenant(Tenant(id="t", name="t", created_at=1.0))
        blocker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        blocker.execute("BEGIN IMMEDIATE")
        blocker.execute("UPDATE tenants SET name = 'held'")

        def release() -> None:
            time.sleep(0.3)
            blocker.execute("COMMIT")

        releaser = threading.Thread(target=release)
        releaser.start()
        started = time.monotonic()
        await storage.create_key(make_key("t", "h"))  # waits for the lock instead of failing
        assert time.monotonic() - started >= 0.2
        releaser.join()
        blocker.close()
        # reads never waited on the writer
        tenant = await storage.get_tenant("t")
        assert tenant is not None and tenant.name == "held"


@pytest.mark.anyio
async def test_a_failed_write_rolls_back_the_whole_transaction(tmp_path: Path) -> None:
    async with SQLiteStorage(tmp_path / "sira.db") as storage:
        await storage.create_tenant(Tenant(id="t", name="t", created_at=1.0))
        version, _ = await storage.changes_since(0)
        with pytest.raises(TypeError):
            # msgspec cannot encode an object as JSON: fails after the existence checks, mid-transaction
            await storage.create_key(make_key("t", "h", metadata={"x": object()}))
        with pytest.raises(sqlite3.Error):  # the second row cannot be bound, after the first was inserted
            await storage.write_usage([
                UsageRecord(request_id="ok", timestamp=1.0, operation="chat", principal="p", principal_kind="k"),
                UsageRecord(request_id="bad", timestamp=1.0, operation="chat", principal="p", principal_kind="k",
                            prompt_tokens=object()),  # type: ignore[arg-type]
            ])
        assert await storage.changes_since(0) == (version, [])
        assert await storage.list_keys() == []
        assert await storage.query_usage(UsageFilter()) == []


@pytest.mark.anyio
async def test_a_closed_store_refuses_work() -> None:
    storage = SQLiteStorage()
    with pytest.raises(RuntimeError, match="not open"):
        await storage.get_tenant("t")
    await storage.open()
    with pytest.raises(RuntimeError, match="already open"):
        await storage.open()
    await storage.aclose()
    await storage.aclose()  # twice is fine
    with pytest.raises(RuntimeError, match="not open"):
        await storage.get_tenant("t")


@pytest.mark.anyio
async def test_a_cancelled_caller_leaves_the_store_usable() -> None:
    async with SQLiteStorage() as storage:
        await storage.create_tenant(Tenant(id="t", name="t", created_at=1.0))
        with anyio.move_on_after(0):  # cancelled while waiting for the writer thread
            await storage.create_key(make_key("t", "h", id="k"))
        await storage.create_key(make_key("t", "h2", id="k2"))  # queued behind it on the same writer
        # the operation was handed over before the cancellation, so it ran whole: cancelling a
        # caller never splits a transaction
        assert await storage.get_key("k") is not None
        assert await storage.get_key("k2") is not None


# -- where the file goes --------------------------------------------------------------------------------


def test_database_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config_file = tmp_path / "etc" / "kernel.toml"
    from_file = make_config({"kernel": {"data_dir": "state"}})
    from_file.source = str(config_file)
    assert database_path(SQLiteConfig(), from_file) == str(tmp_path / "etc" / "state" / "sira.db")
    assert database_path(SQLiteConfig(path="db/x.db"), from_file) == str(tmp_path / "etc" / "db" / "x.db")
    assert database_path(SQLiteConfig(path="/abs/x.db"), from_file) == "/abs/x.db"
    assert database_path(SQLiteConfig(path=":memory:"), from_file) == ":memory:"
    absolute = make_config({"kernel": {"data_dir": "/var/lib/sira"}})
    assert database_path(SQLiteConfig(), absolute) == "/var/lib/sira/sira.db"
    in_memory = make_config()  # built in code: relative to the working directory
    assert database_path(SQLiteConfig(), in_memory) == str(tmp_path / ".sira" / "sira.db")
