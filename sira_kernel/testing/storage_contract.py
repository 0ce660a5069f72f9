"""The contract every storage backend passes: one pytest suite for KeyStore, UsageStore, AuditStore
and SessionStore (``sira_kernel.storage``), whatever engine is behind them.

**Using it.** Subclass :class:`StorageContract` in a test module of your backend (the subclass's name
must start with ``Test`` so pytest collects it) and implement :meth:`StorageContract.open_storage`:
an async context manager that opens your store on ``database`` and closes every connection on exit.
It may yield one object implementing all four Protocols, a :class:`Stores`, or a mapping from
interface (the class or its name) to implementation. The ``database`` fixture gives each test a
fresh, empty database: by default a file path in pytest's ``tmp_path`` (right for SQLite); a server
backend overrides it to create (and afterwards drop) a database or schema and return its address::

    # plugins/sira-storage-sqlite/tests/test_contract.py
    from contextlib import asynccontextmanager

    from sira_storage_sqlite import SQLiteStorage

    from sira_kernel.testing.storage_contract import StorageContract


    class TestSQLiteContract(StorageContract):
        @asynccontextmanager
        async def open_storage(self, database):
            async with SQLiteStorage(database) as storage:
                yield storage


    # a server backend
    class TestPostgresContract(StorageContract):
        @pytest.fixture
        def database(self, postgres_server):
            with postgres_server.fresh_database() as dsn:   # created empty, dropped afterwards
                yield dsn

        def open_storage(self, database):
            return PostgresStorage(database)                 # an async context manager

Every test is an async test marked ``anyio``; the class's ``anyio_backend`` fixture picks
``"asyncio"`` (override it to run on trio too). Some tests open the same ``database`` twice at once
(two processes of ``sira serve`` sharing one store): both must see each other's writes and no
"database is locked" may escape. Keep the suite fast: it writes a few thousand rows in all.

**The contract** (what ``sira_kernel.storage`` leaves to the backend, decided here):

* ``create_*`` keeps the id it is given, and generates a fresh one when the id is ``""``; it returns
  the stored record. ``write_audit`` does the same with an entry's id.
* ``ValueError`` for a conflict: an id already used; a tenant name already used; a team name or a
  user email already used in the same tenant; a key hash already used (the message never contains
  the hash). Also for a team or user of another tenant than the record's ``tenant_id``.
* ``LookupError`` when the id to update, delete or revoke does not exist, or when a record refers to
  a tenant, team or user that does not exist. ``get_*`` and ``find_key_by_hash`` answer None.
* ``list_*`` order by ``created_at`` then id. ``find_key_by_hash`` returns revoked and expired keys
  too (the auth plugin judges them). ``revoke_key(id, at)`` sets ``revoked_at`` unless the key was
  already revoked earlier.
* Deleting a tenant deletes its teams, users and keys; deleting a team deletes its keys and leaves
  its users without a team; deleting a user deletes its keys. Usage and audit rows stay.
* ``changes_since(v)`` returns ``(current, ids)``: ``current`` never decreases and grows with every
  transaction that changes a key; ``ids`` lists, once each, the keys changed after version ``v``:
  created, updated, revoked, deleted, or whose tenant, team or user was updated or deleted. A ``v``
  above ``current`` (the database was replaced) lists every key ever changed.
* ``write_usage`` stores a batch all or nothing; a ``request_id`` already stored (or repeated in
  the batch) is skipped. Every ``UsageRecord`` field round-trips exactly.
* ``UsageFilter``: ``since`` inclusive, ``until`` exclusive, the other fields equality; ``query_usage``
  returns newest first; negative ``limit`` or ``offset`` is a ``ValueError``.
* ``summarize_usage`` groups by any of tenant, team, principal, model, provider, status (as text,
  ``"200"``), day (the UTC date, ``"2026-01-31"``); anything else is a ``ValueError``. It ignores
  ``limit``/``offset``, returns no row when nothing matches, and orders rows by group values.
  ``errors`` counts statuses >= 400; ``cost_usd`` counts unpriced requests as 0.
* ``spend(scope, id, since)``: scope is tenant, team or principal (else ``ValueError``); ``since``
  inclusive.
* ``query_audit`` returns newest first; ``since`` inclusive.
* Sessions expire ``ttl_s`` seconds after ``put_session`` (an expired value reads as None);
  ``put_session`` replaces value and expiry; ``ttl_s`` must be positive (``ValueError``);
  deleting a missing session is not an error.
* Every text is stored verbatim: unicode, quotes, SQL and ``%``/``_`` wildcards (NUL characters
  are not required: PostgreSQL's text refuses them).
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from ..events import Attempt, UsageRecord
from ..storage import (
    AuditEntry,
    AuditStore,
    KeyRecord,
    KeyStore,
    Limits,
    SessionStore,
    Team,
    Tenant,
    UsageFilter,
    UsageStore,
    User,
)

__all__ = ["HOSTILE_STRINGS", "StorageContract", "Stores", "as_stores", "make_key", "make_usage"]

HOSTILE_STRINGS: tuple[str, ...] = (
    "' OR '1'='1",
    "\"; DROP TABLE keys; --",
    "'); DROP TABLE usage_records; --",
    "1; SELECT pg_sleep(5); --",
    "pg_sleep(5)",
    "x' AND sleep(5) AND 'x'='x",
    "%s %(name)s {0} $1 ? :name @p",
    "100% of _all_ %",
    "back\\slash \\' \\\" \\\\",
    "Zürich — 東京 — Кириллица — عربى — 🚀👩‍💻",
    "e\u0301 \u200b \ufeff \u202e",
    "line\nbreak\ttab\rreturn",
    "",
    "x" * 10_000,
)
"""Texts every field must store and match verbatim (injection payloads, unicode, wildcards)."""


@dataclass(frozen=True)
class Stores:
    """The four storage services under test (often one object four times)."""

    keys: KeyStore
    usage: UsageStore
    audit: AuditStore
    sessions: SessionStore


_INTERFACES: tuple[tuple[str, type], ...] = (
    ("keys", KeyStore), ("usage", UsageStore), ("audit", AuditStore), ("sessions", SessionStore),
)


def as_stores(opened: Any) -> Stores:
    """A :class:`Stores` from what ``open_storage`` yielded: a Stores, a mapping from interface (class
    or name) to implementation, or one object implementing all four Protocols."""
    if isinstance(opened, Stores):
        return opened
    found: dict[str, Any]
    if isinstance(opened, Mapping):
        by_name = {k if isinstance(k, str) else k.__name__: v for k, v in opened.items()}
        found = {field: by_name.get(interface.__name__) for field, interface in _INTERFACES}
    else:
        found = {field: opened for field, _ in _INTERFACES}
    missing = [i.__name__ for field, i in _INTERFACES if not isinstance(found[field], i)]
    if missing:
        raise TypeError(f"open_storage yielded {opened!r}, which does not implement {', '.join(missing)}")
    return Stores(**found)


# -- record factories ---------------------------------------------------------------------------------


def make_tenant(name: str = "acme", *, id: str = "", created_at: float = 1.0, **fields: Any) -> Tenant:
    return Tenant(id=id, name=name, created_at=created_at, **fields)


def make_key(tenant_id: str, key_hash: str, *, id: str = "", created_at: float = 1.0, **fields: Any) -> KeyRecord:
    """A key with every required field filled in (override any)."""
    values: dict[str, Any] = dict(
        prefix="sk-sira-abcd", name="a key", role="member", created_by="admin",
    )
    values.update(fields)
    return KeyRecord(id=id, key_hash=key_hash, tenant_id=tenant_id, created_at=created_at, **values)


def make_usage(request_id: str, timestamp: float = 1_700_000_000.0, **fields: Any) -> UsageRecord:
    """A usage record with the required fields filled in (override any)."""
    values: dict[str, Any] = dict(operation="chat", principal="key-1", principal_kind="key")
    values.update(fields)
    return UsageRecord(request_id=request_id, timestamp=timestamp, **values)


def _full_key(tenant_id: str, team_id: str | None, user_id: str | None) -> KeyRecord:
    return make_key(
        tenant_id, "hash-full", id="key-full", prefix="sk-sira-full", name="full", role="tenant-admin",
        created_at=1_700_000_123.456789, created_by="user-1", team_id=team_id, user_id=user_id,
        allowed_models=["gpt-4o", "claude-*"], allowed_routes=["/v1/chat/completions"],
        limits=Limits(rpm=60, tpm=100_000, max_concurrent=4, budget_usd=12.5, budget_period="daily"),
        metadata={"env": "prod", "nested": {"n": [1, 2.5, None, True]}, "unicode": "Zürich"},
        expires_at=1_800_000_000.25, revoked_at=None, rotated_to="key-next",
    )


# The usage data set most usage tests use. BASE is 2023-11-14 22:13:20 UTC: the first two records
# fall on 2023-11-14, the other three on 2023-11-15 (UTC).
BASE = 1_700_000_000.0
_LEDGER = (
    make_usage("r1", BASE, tenant="A", team="A1", principal="k1", model="m1", provider="p1", status=200,
               prompt_tokens=10, completion_tokens=5, total_tokens=15, cost_usd=0.01, latency_ms=100.0),
    make_usage("r2", BASE + 10, tenant="A", team="A1", principal="k2", model="m2", provider="p2", status=500,
               error_code="upstream_error", cost_usd=None, latency_ms=50.0),
    make_usage("r3", BASE + 7200, tenant="A", team="A2", principal="k1", model="m1", provider="p1", status=200,
               prompt_tokens=20, completion_tokens=10, total_tokens=30, cost_usd=0.02, latency_ms=200.0),
    make_usage("r4", BASE + 7300, tenant="B", principal="k3", model="m1", provider="p2", status=429,
               error_code="rate_limited", latency_ms=10.0),
    make_usage("r5", BASE + 7400, principal="master", principal_kind="master", model="m2", provider="p1",
               prompt_tokens=5, completion_tokens=5, total_tokens=10, cost_usd=0.005, latency_ms=20.0),
)


def _ids(records: list[UsageRecord]) -> list[str]:
    return [r.request_id for r in records]


class StorageContract:
    """The storage contract as pytest tests. Subclass it and implement :meth:`open_storage`."""

    # -- what a backend provides --------------------------------------------------------------------

    def open_storage(self, database: Any) -> AbstractAsyncContextManager[Any]:
        """An async context manager: the store opened on ``database`` (closed on exit)."""
        raise NotImplementedError(f"{type(self).__name__} must implement open_storage(database)")

    @pytest.fixture
    def database(self, tmp_path: Path) -> Any:
        """A fresh, empty database for one test (default: a file path under ``tmp_path``)."""
        return str(tmp_path / "contract.db")

    @pytest.fixture
    def anyio_backend(self) -> str:
        return "asyncio"

    @pytest.fixture
    async def stores(self, database: Any) -> AsyncIterator[Stores]:
        async with self.open_storage(database) as opened:
            yield as_stores(opened)

    async def _tenant(self, stores: Stores, name: str = "acme", **fields: Any) -> Tenant:
        return await stores.keys.create_tenant(make_tenant(name, **fields))

    # -- tenants ------------------------------------------------------------------------------------

    @pytest.mark.anyio
    async def test_tenant_round_trip(self, stores: Stores) -> None:
        tenant = Tenant(
            id="t-1", name="Acme", created_at=1_700_000_000.5, limits=Limits(rpm=10, budget_usd=99.5),
            metadata={"plan": "pro", "seats": [1, 2]}, disabled=False,
        )
        assert await stores.keys.create_tenant(tenant) == tenant
        assert await stores.keys.get_tenant("t-1") == tenant
        assert await stores.keys.get_tenant("missing") is None
        changed = msgspec.structs.replace(tenant, name="Acme Corp", disabled=True, limits=Limits())
        assert await stores.keys.update_tenant(changed) == changed
        assert await stores.keys.get_tenant("t-1") == changed
        assert await stores.keys.list_tenants() == [changed]
        await stores.keys.delete_tenant("t-1")
        assert await stores.keys.get_tenant("t-1") is None
        assert await stores.keys.list_tenants() == []

    @pytest.mark.anyio
    async def test_ids_are_generated_when_empty(self, stores: Stores) -> None:
        first = await self._tenant(stores, "one")
        second = await self._tenant(stores, "two")
        assert first.id and second.id and first.id != second.id
        assert await stores.keys.get_tenant(first.id) == first
        team = await stores.keys.create_team(Team(id="", tenant_id=first.id, name="t", created_at=1.0))
        user = await stores.keys.create_user(
            User(id="", tenant_id=first.id, email="a@example.com", role="member", created_at=1.0)
        )
        key = await stores.keys.create_key(make_key(first.id, "h"))
        assert team.id and user.id and key.id
        assert await stores.keys.get_key(key.id) == key
        await stores.audit.write_audit(AuditEntry(id="", at=1.0, actor="a", action="x", target_type="key"))
        [entry] = await stores.audit.query_audit()
        assert entry.id

    @pytest.mark.anyio
    async def test_tenants_are_listed_by_creation(self, stores: Stores) -> None:
        for name, created in (("c", 3.0), ("a", 1.0), ("b", 2.0)):
            await self._tenant(stores, name, id=f"t-{name}", created_at=created)
        assert [t.name for t in await stores.keys.list_tenants()] == ["a", "b", "c"]

    @pytest.mark.anyio
    async def test_tenant_conflicts_raise_value_error(self, stores: Stores) -> None:
        await self._tenant(stores, "acme", id="t-1")
        other = await self._tenant(stores, "other", id="t-2")
        with pytest.raises(ValueError):
            await self._tenant(stores, "new name", id="t-1")
        with pytest.raises(ValueError):
            await self._tenant(stores, "acme", id="t-3")
        with pytest.raises(ValueError):
            await stores.keys.update_tenant(msgspec.structs.replace(other, name="acme"))
        assert [t.id for t in await stores.keys.list_tenants()] == ["t-1", "t-2"]

    @pytest.mark.anyio
    async def test_missing_tenant_raises_lookup_error(self, stores: Stores) -> None:
        with pytest.raises(LookupError):
            await stores.keys.update_tenant(make_tenant(id="nope"))
        with pytest.raises(LookupError):
            await stores.keys.delete_tenant("nope")

    # -- teams and users ----------------------------------------------------------------------------

    @pytest.mark.anyio
    async def test_team_round_trip_and_filter(self, stores: Stores) -> None:
        a = await self._tenant(stores, "a", id="A")
        b = await self._tenant(stores, "b", id="B")
        team = Team(id="T1", tenant_id=a.id, name="core", created_at=5.0, limits=Limits(tpm=5),
                    metadata={"k": "v"})
        assert await stores.keys.create_team(team) == team
        await stores.keys.create_team(Team(id="T2", tenant_id=b.id, name="core", created_at=6.0))
        await stores.keys.create_team(Team(id="T3", tenant_id=a.id, name="ml", created_at=7.0))
        assert await stores.keys.get_team("T1") == team
        assert await stores.keys.get_team("missing") is None
        assert [t.id for t in await stores.keys.list_teams()] == ["T1", "T2", "T3"]
        assert [t.id for t in await stores.keys.list_teams(a.id)] == ["T1", "T3"]
        assert await stores.keys.list_teams("nobody") == []
        renamed = msgspec.structs.replace(team, name="platform", limits=Limits(rpm=1))
        assert await stores.keys.update_team(renamed) == renamed
        assert await stores.keys.get_team("T1") == renamed
        await stores.keys.delete_team("T1")
        assert [t.id for t in await stores.keys.list_teams()] == ["T2", "T3"]

    @pytest.mark.anyio
    async def test_team_conflicts_and_missing_ids(self, stores: Stores) -> None:
        a = await self._tenant(stores, "a", id="A")
        await stores.keys.create_team(Team(id="T1", tenant_id=a.id, name="core", created_at=1.0))
        t2 = await stores.keys.create_team(Team(id="T2", tenant_id=a.id, name="ml", created_at=1.0))
        with pytest.raises(ValueError):
            await stores.keys.create_team(Team(id="T1", tenant_id=a.id, name="other", created_at=1.0))
        with pytest.raises(ValueError):
            await stores.keys.create_team(Team(id="T9", tenant_id=a.id, name="core", created_at=1.0))
        with pytest.raises(ValueError):
            await stores.keys.update_team(msgspec.structs.replace(t2, name="core"))
        with pytest.raises(LookupError):
            await stores.keys.create_team(Team(id="T9", tenant_id="no-tenant", name="x", created_at=1.0))
        with pytest.raises(LookupError):
            await stores.keys.update_team(Team(id="nope", tenant_id=a.id, name="x", created_at=1.0))
        with pytest.raises(LookupError):
            await stores.keys.delete_team("nope")

    @pytest.mark.anyio
    async def test_user_round_trip_and_conflicts(self, stores: Stores) -> None:
        a = await self._tenant(stores, "a", id="A")
        b = await self._tenant(stores, "b", id="B")
        await stores.keys.create_team(Team(id="TA", tenant_id=a.id, name="core", created_at=1.0))
        await stores.keys.create_team(Team(id="TB", tenant_id=b.id, name="core", created_at=1.0))
        user = User(id="U1", tenant_id=a.id, email="ada@example.com", role="tenant-admin", created_at=2.0,
                    team_id="TA", disabled=False)
        assert await stores.keys.create_user(user) == user
        assert await stores.keys.get_user("U1") == user
        assert await stores.keys.get_user("missing") is None
        # the same email in another tenant is another user
        await stores.keys.create_user(User(id="U2", tenant_id=b.id, email="ada@example.com", role="member",
                                           created_at=3.0))
        assert [u.id for u in await stores.keys.list_users()] == ["U1", "U2"]
        assert [u.id for u in await stores.keys.list_users(b.id)] == ["U2"]
        with pytest.raises(ValueError):  # id taken
            await stores.keys.create_user(msgspec.structs.replace(user, email="x@example.com"))
        with pytest.raises(ValueError):  # email taken in the tenant
            await stores.keys.create_user(msgspec.structs.replace(user, id="U3"))
        with pytest.raises(ValueError):  # a team of another tenant
            await stores.keys.create_user(User(id="U4", tenant_id=a.id, email="b@example.com", role="member",
                                               created_at=1.0, team_id="TB"))
        with pytest.raises(LookupError):
            await stores.keys.create_user(User(id="U5", tenant_id=a.id, email="c@example.com", role="member",
                                               created_at=1.0, team_id="no-team"))
        with pytest.raises(LookupError):
            await stores.keys.create_user(User(id="U6", tenant_id="no-tenant", email="d@example.com",
                                               role="member", created_at=1.0))
        disabled = msgspec.structs.replace(user, disabled=True, role="viewer", team_id=None)
        assert await stores.keys.update_user(disabled) == disabled
        assert await stores.keys.get_user("U1") == disabled
        with pytest.raises(LookupError):
            await stores.keys.update_user(msgspec.structs.replace(user, id="nope", email="z@example.com"))
        await stores.keys.delete_user("U1")
        assert await stores.keys.get_user("U1") is None
        with pytest.raises(LookupError):
            await stores.keys.delete_user("U1")

    # -- keys ---------------------------------------------------------------------------------------

    @pytest.mark.anyio
    async def test_key_round_trip_keeps_every_field(self, stores: Stores) -> None:
        tenant = await self._tenant(stores, id="A")
        await stores.keys.create_team(Team(id="T", tenant_id=tenant.id, name="core", created_at=1.0))
        await stores.keys.create_user(User(id="U", tenant_id=tenant.id, email="u@x", role="member", created_at=1.0))
        key = _full_key(tenant.id, "T", "U")
        assert await stores.keys.create_key(key) == key
        assert await stores.keys.get_key(key.id) == key
        assert await stores.keys.find_key_by_hash("hash-full") == key
        bare = await stores.keys.create_key(make_key(tenant.id, "hash-bare", id="key-bare", created_at=2.0))
        assert bare.allowed_models is None and bare.limits == Limits() and bare.metadata == {}
        assert await stores.keys.get_key("key-bare") == bare
        empty_lists = make_key(tenant.id, "hash-empty", id="key-empty", allowed_models=[], allowed_routes=[])
        await stores.keys.create_key(empty_lists)
        assert await stores.keys.get_key("key-empty") == empty_lists  # [] (nothing allowed) is not None

    @pytest.mark.anyio
    async def test_find_key_by_hash(self, stores: Stores) -> None:
        tenant = await self._tenant(stores)
        key = await stores.keys.create_key(make_key(tenant.id, "abc"))
        assert await stores.keys.find_key_by_hash("abc") == key
        assert await stores.keys.find_key_by_hash("ABC") is None
        assert await stores.keys.find_key_by_hash("ab") is None
        assert await stores.keys.find_key_by_hash("abc ") is None
        assert await stores.keys.find_key_by_hash("") is None
        revoked = await stores.keys.revoke_key(key.id, 5.0)
        assert await stores.keys.find_key_by_hash("abc") == revoked  # the caller judges validity

    @pytest.mark.anyio
    async def test_key_conflicts_raise_value_error(self, stores: Stores) -> None:
        tenant = await self._tenant(stores)
        await stores.keys.create_key(make_key(tenant.id, "secret-hash-1", id="k1"))
        second = await stores.keys.create_key(make_key(tenant.id, "secret-hash-2", id="k2"))
        with pytest.raises(ValueError):
            await stores.keys.create_key(make_key(tenant.id, "secret-hash-3", id="k1"))
        with pytest.raises(ValueError) as duplicate_hash:
            await stores.keys.create_key(make_key(tenant.id, "secret-hash-1", id="k3"))
        assert "secret-hash-1" not in str(duplicate_hash.value)
        with pytest.raises(ValueError) as updated_hash:
            await stores.keys.update_key(msgspec.structs.replace(second, key_hash="secret-hash-1"))
        assert "secret-hash-1" not in str(updated_hash.value)
        assert [k.id for k in await stores.keys.list_keys()] == ["k1", "k2"]
        assert await stores.keys.get_key("k2") == second

    @pytest.mark.anyio
    async def test_key_references_are_checked(self, stores: Stores) -> None:
        a = await self._tenant(stores, "a", id="A")
        b = await self._tenant(stores, "b", id="B")
        await stores.keys.create_team(Team(id="TB", tenant_id=b.id, name="core", created_at=1.0))
        await stores.keys.create_user(User(id="UB", tenant_id=b.id, email="u@x", role="member", created_at=1.0))
        with pytest.raises(LookupError):
            await stores.keys.create_key(make_key("no-tenant", "h1"))
        with pytest.raises(LookupError):
            await stores.keys.create_key(make_key(a.id, "h2", team_id="no-team"))
        with pytest.raises(LookupError):
            await stores.keys.create_key(make_key(a.id, "h3", user_id="no-user"))
        with pytest.raises(ValueError):
            await stores.keys.create_key(make_key(a.id, "h4", team_id="TB"))
        with pytest.raises(ValueError):
            await stores.keys.create_key(make_key(a.id, "h5", user_id="UB"))
        assert await stores.keys.list_keys() == []

    @pytest.mark.anyio
    async def test_list_keys_filters(self, stores: Stores) -> None:
        a = await self._tenant(stores, "a", id="A")
        b = await self._tenant(stores, "b", id="B")
        await stores.keys.create_team(Team(id="T1", tenant_id=a.id, name="one", created_at=1.0))
        await stores.keys.create_team(Team(id="T2", tenant_id=a.id, name="two", created_at=1.0))
        for i, (tenant, team) in enumerate([(a.id, "T1"), (a.id, "T2"), (a.id, None), (b.id, None), (a.id, "T1")]):
            await stores.keys.create_key(make_key(tenant, f"h{i}", id=f"k{i}", team_id=team, created_at=float(i)))
        assert [k.id for k in await stores.keys.list_keys()] == ["k0", "k1", "k2", "k3", "k4"]
        assert [k.id for k in await stores.keys.list_keys(tenant_id=a.id)] == ["k0", "k1", "k2", "k4"]
        assert [k.id for k in await stores.keys.list_keys(team_id="T1")] == ["k0", "k4"]
        assert [k.id for k in await stores.keys.list_keys(tenant_id=b.id, team_id="T1")] == []
        assert await stores.keys.list_keys(tenant_id="nobody") == []

    @pytest.mark.anyio
    async def test_update_and_revoke_key(self, stores: Stores) -> None:
        tenant = await self._tenant(stores)
        key = await stores.keys.create_key(make_key(tenant.id, "h", id="k"))
        changed = msgspec.structs.replace(
            key, name="renamed", allowed_models=["m"], limits=Limits(rpm=5), metadata={"a": 1}, expires_at=9.0
        )
        assert await stores.keys.update_key(changed) == changed
        assert await stores.keys.get_key("k") == changed
        revoked = await stores.keys.revoke_key("k", 100.0)
        assert revoked == msgspec.structs.replace(changed, revoked_at=100.0)
        assert await stores.keys.get_key("k") == revoked
        assert (await stores.keys.revoke_key("k", 200.0)).revoked_at == 100.0  # the earlier revocation stands
        assert (await stores.keys.revoke_key("k", 50.0)).revoked_at == 50.0
        with pytest.raises(LookupError):
            await stores.keys.revoke_key("nope", 1.0)
        with pytest.raises(LookupError):
            await stores.keys.update_key(make_key(tenant.id, "other", id="nope"))

    # -- deletes cascade ----------------------------------------------------------------------------

    @pytest.mark.anyio
    async def test_deletes_cascade_to_keys(self, stores: Stores) -> None:
        a = await self._tenant(stores, "a", id="A")
        b = await self._tenant(stores, "b", id="B")
        await stores.keys.create_team(Team(id="T", tenant_id=a.id, name="core", created_at=1.0))
        await stores.keys.create_user(User(id="U", tenant_id=a.id, email="u@x", role="member", created_at=1.0,
                                           team_id="T"))
        await stores.keys.create_user(User(id="V", tenant_id=a.id, email="v@x", role="member", created_at=2.0))
        await stores.keys.create_key(make_key(a.id, "h-team", id="k-team", team_id="T"))
        await stores.keys.create_key(make_key(a.id, "h-user", id="k-user", user_id="V"))
        await stores.keys.create_key(make_key(a.id, "h-tenant", id="k-tenant"))
        await stores.keys.create_key(make_key(b.id, "h-other", id="k-other"))

        await stores.keys.delete_team("T")
        assert await stores.keys.get_key("k-team") is None
        assert await stores.keys.find_key_by_hash("h-team") is None
        user = await stores.keys.get_user("U")
        assert user is not None and user.team_id is None
        await stores.keys.delete_user("V")
        assert await stores.keys.get_key("k-user") is None
        await stores.keys.delete_tenant(a.id)
        assert await stores.keys.list_users(a.id) == []
        assert await stores.keys.list_teams(a.id) == []
        assert [k.id for k in await stores.keys.list_keys()] == ["k-other"]
        # the freed hash, name and ids can be used again
        again = await self._tenant(stores, "a", id="A")
        await stores.keys.create_key(make_key(again.id, "h-tenant", id="k-tenant"))

    # -- changes_since ------------------------------------------------------------------------------

    @pytest.mark.anyio
    async def test_changes_since_lists_changed_keys(self, stores: Stores) -> None:
        keys = stores.keys
        start, changed = await keys.changes_since(0)
        assert changed == []
        tenant = await self._tenant(stores)
        k1 = await keys.create_key(make_key(tenant.id, "h1", id="k1"))
        await keys.create_key(make_key(tenant.id, "h2", id="k2"))
        v1, changed = await keys.changes_since(start)
        assert v1 > start and sorted(changed) == ["k1", "k2"]
        assert await keys.changes_since(v1) == (v1, [])

        await keys.update_key(msgspec.structs.replace(k1, name="renamed"))
        v2, changed = await keys.changes_since(v1)
        assert v2 > v1 and changed == ["k1"]
        await keys.revoke_key("k2", 10.0)
        v3, changed = await keys.changes_since(v2)
        assert v3 > v2 and changed == ["k2"]
        v, changed = await keys.changes_since(v1)  # each id once, however often it changed
        assert v == v3 and sorted(changed) == ["k1", "k2"]
        assert (await keys.changes_since(v3))[1] == []
        # a version from a replaced database (above the current one) lists everything
        v, changed = await keys.changes_since(v3 + 1000)
        assert v == v3 and sorted(changed) == ["k1", "k2"]

    @pytest.mark.anyio
    async def test_changes_since_covers_owners_of_keys(self, stores: Stores) -> None:
        keys = stores.keys
        tenant = await self._tenant(stores, "a", id="A")
        other = await self._tenant(stores, "b", id="B")
        team = await keys.create_team(Team(id="T", tenant_id=tenant.id, name="core", created_at=1.0))
        user = await keys.create_user(User(id="U", tenant_id=tenant.id, email="u@x", role="member", created_at=1.0))
        await keys.create_key(make_key(tenant.id, "h1", id="k-team", team_id="T"))
        await keys.create_key(make_key(tenant.id, "h2", id="k-user", user_id="U"))
        await keys.create_key(make_key(tenant.id, "h3", id="k-tenant"))
        await keys.create_key(make_key(other.id, "h4", id="k-other"))

        async def changed_by(change: Any) -> list[str]:
            before, _ = await keys.changes_since(0)
            await change
            after, ids = await keys.changes_since(before)
            assert after > before
            return sorted(ids)

        assert await changed_by(keys.update_user(msgspec.structs.replace(user, disabled=True))) == ["k-user"]
        assert await changed_by(keys.update_team(msgspec.structs.replace(team, limits=Limits(rpm=1)))) == ["k-team"]
        assert await changed_by(keys.update_tenant(msgspec.structs.replace(tenant, disabled=True))) == [
            "k-team", "k-tenant", "k-user",
        ]
        assert await changed_by(keys.delete_user("U")) == ["k-user"]
        assert await changed_by(keys.delete_team("T")) == ["k-team"]
        assert await changed_by(keys.delete_tenant(tenant.id)) == ["k-tenant"]

    @pytest.mark.anyio
    async def test_changes_since_is_monotonic_under_concurrent_writes(self, stores: Stores) -> None:
        tenant = await self._tenant(stores)
        seen: list[int] = []

        async def create(i: int) -> None:
            await stores.keys.create_key(make_key(tenant.id, f"h{i}", id=f"k{i:03d}"))
            seen.append((await stores.keys.changes_since(0))[0])

        async with anyio.create_task_group() as tg:
            for i in range(50):
                tg.start_soon(create, i)
        current, changed = await stores.keys.changes_since(0)
        assert sorted(changed) == [f"k{i:03d}" for i in range(50)]
        assert max(seen) == current
        assert len(await stores.keys.list_keys()) == 50

    # -- usage --------------------------------------------------------------------------------------

    @pytest.mark.anyio
    async def test_usage_round_trip_keeps_every_field(self, stores: Stores) -> None:
        record = UsageRecord(
            request_id="req-full", timestamp=1_700_000_000.123456, operation="chat", principal="key-1",
            principal_kind="key", tenant="t", team="tm", model="smart", provider="openai",
            upstream_model="gpt-4o-2024-08-06", stream=True, status=200, error_code=None, prompt_tokens=1234,
            completion_tokens=567, total_tokens=1801, cached_tokens=1000, usage_estimated=True,
            cost_usd=0.0123456789, latency_ms=1234.5, ttft_ms=87.25, attempts=2,
            attempt_log=[
                Attempt(provider="azure", model="gpt-4o", status=429, error_code="rate_limited", latency_ms=12.5),
                Attempt(provider="openai", model="gpt-4o-2024-08-06", status=200, latency_ms=1200.0),
            ],
        )
        minimal = make_usage("req-min", 1_700_000_001.0, status=499, error_code="client_closed")
        await stores.usage.write_usage([record, minimal])
        assert await stores.usage.query_usage(UsageFilter()) == [minimal, record]

    @pytest.mark.anyio
    async def test_write_usage_is_idempotent_per_request_id(self, stores: Stores) -> None:
        first = make_usage("r1", BASE, cost_usd=1.0)
        await stores.usage.write_usage([first, make_usage("r2", BASE + 1)])
        # a retried batch: r1 again (even with other values), r2 again, one new record, r3 twice
        await stores.usage.write_usage([
            make_usage("r1", BASE + 5, cost_usd=9.0), make_usage("r2", BASE + 1), make_usage("r3", BASE + 2),
            make_usage("r3", BASE + 3),
        ])
        await stores.usage.write_usage([])
        records = await stores.usage.query_usage(UsageFilter())
        assert _ids(records) == ["r3", "r2", "r1"]
        assert records[2] == first and records[0].timestamp == BASE + 2

    @pytest.mark.anyio
    async def test_query_usage_filters(self, stores: Stores) -> None:
        await stores.usage.write_usage(list(_LEDGER))
        query = stores.usage.query_usage
        assert _ids(await query(UsageFilter())) == ["r5", "r4", "r3", "r2", "r1"]  # newest first
        assert _ids(await query(UsageFilter(since=BASE + 10))) == ["r5", "r4", "r3", "r2"]  # inclusive
        assert _ids(await query(UsageFilter(until=BASE + 7200))) == ["r2", "r1"]  # exclusive
        assert _ids(await query(UsageFilter(since=BASE + 5, until=BASE + 7300))) == ["r3", "r2"]
        assert _ids(await query(UsageFilter(tenant="A"))) == ["r3", "r2", "r1"]
        assert _ids(await query(UsageFilter(team="A1"))) == ["r2", "r1"]
        assert _ids(await query(UsageFilter(principal="k1"))) == ["r3", "r1"]
        assert _ids(await query(UsageFilter(model="m2"))) == ["r5", "r2"]
        assert _ids(await query(UsageFilter(provider="p2"))) == ["r4", "r2"]
        assert _ids(await query(UsageFilter(tenant="A", model="m1", provider="p1"))) == ["r3", "r1"]
        assert _ids(await query(UsageFilter(tenant="nobody"))) == []
        assert _ids(await query(UsageFilter(limit=2))) == ["r5", "r4"]
        assert _ids(await query(UsageFilter(limit=2, offset=2))) == ["r3", "r2"]
        assert _ids(await query(UsageFilter(limit=2, offset=4))) == ["r1"]
        assert _ids(await query(UsageFilter(limit=0))) == []
        with pytest.raises(ValueError):
            await query(UsageFilter(limit=-1))
        with pytest.raises(ValueError):
            await query(UsageFilter(offset=-1))

    @pytest.mark.anyio
    async def test_summarize_usage(self, stores: Stores) -> None:
        await stores.usage.write_usage(list(_LEDGER))
        summarize = stores.usage.summarize_usage

        def by_group(rows: list[Any]) -> dict[tuple[Any, ...], Any]:
            return {tuple(row.group.values()): row for row in rows}

        tenants = by_group(await summarize(UsageFilter(), ["tenant"]))
        assert set(tenants) == {("A",), ("B",), (None,)}
        a = tenants[("A",)]
        assert (a.requests, a.errors, a.prompt_tokens, a.completion_tokens, a.total_tokens) == (3, 1, 30, 15, 45)
        assert a.group == {"tenant": "A"}
        assert a.cost_usd == pytest.approx(0.03)
        assert a.avg_latency_ms == pytest.approx(350.0 / 3)
        b = tenants[("B",)]
        assert (b.requests, b.errors, b.total_tokens, b.cost_usd) == (1, 1, 0, 0.0)

        days = await summarize(UsageFilter(), ["day"])
        assert [(r.group["day"], r.requests) for r in days] == [("2023-11-14", 2), ("2023-11-15", 3)]
        statuses = await summarize(UsageFilter(), ["status"])
        assert [(r.group["status"], r.requests, r.errors) for r in statuses] == [
            ("200", 3, 0), ("429", 1, 1), ("500", 1, 1),
        ]
        pairs = by_group(await summarize(UsageFilter(tenant="A"), ["model", "provider"]))
        assert {k: v.requests for k, v in pairs.items()} == {("m1", "p1"): 2, ("m2", "p2"): 1}
        assert next(iter(pairs.values())).group.keys() == {"model", "provider"}
        teams = by_group(await summarize(UsageFilter(since=BASE + 1), ["team", "principal"]))
        assert set(teams) == {("A1", "k2"), ("A2", "k1"), (None, "k3"), (None, "master")}

        [total] = await summarize(UsageFilter(), [])
        assert (total.group, total.requests, total.errors, total.total_tokens) == ({}, 5, 2, 55)
        assert total.cost_usd == pytest.approx(0.035)
        assert await summarize(UsageFilter(tenant="nobody"), []) == []
        assert await summarize(UsageFilter(tenant="nobody"), ["model"]) == []
        # limit and offset page records, not groups: a summary covers every matching record
        [limited] = await summarize(UsageFilter(limit=1, offset=1), [])
        assert limited.requests == 5

    @pytest.mark.anyio
    async def test_summarize_usage_refuses_unknown_groups(self, stores: Stores) -> None:
        await stores.usage.write_usage(list(_LEDGER))
        for bad in ("cost_usd", "request_id", "tenant; DROP TABLE usage_records; --", "1", "", "TENANT"):
            with pytest.raises(ValueError):
                await stores.usage.summarize_usage(UsageFilter(), ["model", bad])
        assert len(await stores.usage.query_usage(UsageFilter())) == 5

    @pytest.mark.anyio
    async def test_spend(self, stores: Stores) -> None:
        await stores.usage.write_usage(list(_LEDGER))
        spend = stores.usage.spend
        assert await spend("tenant", "A", 0.0) == pytest.approx(0.03)
        assert await spend("tenant", "A", BASE + 1) == pytest.approx(0.02)
        assert await spend("tenant", "A", BASE + 7200) == pytest.approx(0.02)  # inclusive
        assert await spend("tenant", "A", BASE + 7201) == 0.0
        assert await spend("team", "A1", 0.0) == pytest.approx(0.01)
        assert await spend("principal", "k1", 0.0) == pytest.approx(0.03)
        assert await spend("principal", "master", 0.0) == pytest.approx(0.005)
        assert await spend("tenant", "B", 0.0) == 0.0  # unpriced requests count 0
        assert await spend("tenant", "nobody", 0.0) == 0.0
        assert isinstance(await spend("tenant", "nobody", 0.0), float)
        for bad in ("model", "tenant_id", "tenant = tenant OR 1=1; --"):
            with pytest.raises(ValueError):
                await spend(bad, "A", 0.0)

    @pytest.mark.anyio
    async def test_large_usage_batches(self, stores: Stores) -> None:
        batch = [
            make_usage(f"big-{i:05d}", BASE + i, tenant=f"t{i % 7}", cost_usd=0.001, total_tokens=i % 100)
            for i in range(5000)
        ]
        await stores.usage.write_usage(batch)
        await stores.usage.write_usage([*batch[:2500], make_usage("big-new", BASE + 9999, cost_usd=0.001)])
        [total] = await stores.usage.summarize_usage(UsageFilter(), [])
        assert total.requests == 5001
        assert total.cost_usd == pytest.approx(5.001)
        assert total.total_tokens == sum(i % 100 for i in range(5000))
        newest = await stores.usage.query_usage(UsageFilter(limit=3))
        assert _ids(newest) == ["big-new", "big-04999", "big-04998"]
        assert len(await stores.usage.query_usage(UsageFilter(limit=10_000))) == 5001
        assert await stores.usage.spend("tenant", "t3", 0.0) == pytest.approx(0.001 * len(range(3, 5000, 7)))

    # -- audit --------------------------------------------------------------------------------------

    @pytest.mark.anyio
    async def test_audit_round_trip_and_query(self, stores: Stores) -> None:
        entries = [
            AuditEntry(id="a1", at=10.0, actor="admin", action="key.create", target_type="key", target_id="k1",
                       tenant_id="A", client="127.0.0.1", request_id="req-1", details={"name": "ci", "n": [1]}),
            AuditEntry(id="a2", at=20.0, actor="ada", action="key.revoke", target_type="key", target_id="k1",
                       tenant_id="A", outcome="denied"),
            AuditEntry(id="a3", at=30.0, actor="admin", action="tenant.create", target_type="tenant",
                       tenant_id="B"),
            AuditEntry(id="a4", at=30.0, actor="admin", action="plugin.reload", target_type="plugin"),
        ]
        for entry in entries:
            await stores.audit.write_audit(entry)
        query = stores.audit.query_audit
        assert await query() == [entries[3], entries[2], entries[1], entries[0]]  # newest first
        assert [e.id for e in await query(since=20.0)] == ["a4", "a3", "a2"]
        assert [e.id for e in await query(actor="admin")] == ["a4", "a3", "a1"]
        assert [e.id for e in await query(tenant_id="A")] == ["a2", "a1"]
        assert [e.id for e in await query(since=15.0, actor="admin", tenant_id="A")] == []
        assert [e.id for e in await query(limit=2)] == ["a4", "a3"]
        assert await query(limit=0) == []
        with pytest.raises(ValueError):
            await query(limit=-1)
        with pytest.raises(ValueError):  # append-only: an id is written once
            await stores.audit.write_audit(msgspec.structs.replace(entries[0], action="tampered"))
        assert (await query(actor="admin", since=10.0, limit=10))[-1] == entries[0]

    # -- sessions -----------------------------------------------------------------------------------

    @pytest.mark.anyio
    async def test_sessions(self, stores: Stores) -> None:
        sessions = stores.sessions
        assert await sessions.get_session("s") is None
        every_byte = bytes(range(256))
        await sessions.put_session("s", every_byte, 60)
        assert await sessions.get_session("s") == every_byte
        await sessions.put_session("s", b"replaced", 60)
        assert await sessions.get_session("s") == b"replaced"
        await sessions.put_session("empty", b"", 60)
        assert await sessions.get_session("empty") == b""
        await sessions.delete_session("s")
        assert await sessions.get_session("s") is None
        await sessions.delete_session("s")  # missing: not an error
        big = bytes(range(256)) * 4096  # 1 MiB
        await sessions.put_session("big", big, 60)
        assert await sessions.get_session("big") == big
        for ttl in (0, -1, math.inf, math.nan):
            with pytest.raises(ValueError):
                await sessions.put_session("bad", b"x", ttl)
        assert await sessions.get_session("bad") is None

    @pytest.mark.anyio
    async def test_sessions_expire(self, stores: Stores) -> None:
        sessions = stores.sessions
        await sessions.put_session("short", b"1", 0.2)
        await sessions.put_session("renewed", b"2", 0.2)
        await sessions.put_session("long", b"3", 60)
        assert await sessions.get_session("short") == b"1"
        await sessions.put_session("renewed", b"2b", 60)  # a put replaces the expiry too
        await anyio.sleep(0.35)
        assert await sessions.get_session("short") is None
        assert await sessions.get_session("renewed") == b"2b"
        assert await sessions.get_session("long") == b"3"
        await sessions.put_session("short", b"again", 60)  # an expired key can be used again
        assert await sessions.get_session("short") == b"again"

    # -- hostile and unusual text -------------------------------------------------------------------

    @pytest.mark.anyio
    async def test_hostile_strings_are_stored_verbatim(self, stores: Stores) -> None:
        keys = stores.keys
        for i, text in enumerate(HOSTILE_STRINGS):
            tenant = await keys.create_tenant(make_tenant(f"{i}:{text}", id=f"t{i}:{text}", metadata={text: text}))
            assert await keys.get_tenant(tenant.id) == tenant
            team = await keys.create_team(Team(id=f"team{i}:{text}", tenant_id=tenant.id, name=text,
                                               created_at=1.0, metadata={"v": text}))
            user = await keys.create_user(User(id=f"user{i}:{text}", tenant_id=tenant.id, email=text,
                                               role="member", created_at=1.0, team_id=team.id))
            key = await keys.create_key(make_key(
                tenant.id, f"{i}:{text}", id=f"key{i}:{text}", prefix=text, name=text, created_by=text,
                team_id=team.id, user_id=user.id, allowed_models=[text, "x"], allowed_routes=[text],
                metadata={text: [text]}, rotated_to=text,
            ))
            assert await keys.get_team(team.id) == team
            assert await keys.get_user(user.id) == user
            assert await keys.get_key(key.id) == key
            assert await keys.find_key_by_hash(f"{i}:{text}") == key
            assert [k.id for k in await keys.list_keys(tenant_id=tenant.id, team_id=team.id)] == [key.id]
            assert await keys.list_teams(tenant.id) == [team]
            assert await keys.list_users(tenant.id) == [user]
            assert (await keys.revoke_key(key.id, 5.0)).revoked_at == 5.0
        assert await keys.find_key_by_hash(HOSTILE_STRINGS[0]) is None
        assert await keys.find_key_by_hash("%") is None
        assert len(await keys.list_tenants()) == len(HOSTILE_STRINGS)
        assert len((await keys.changes_since(0))[1]) == len(HOSTILE_STRINGS)

        records = [
            make_usage(f"req{i}:{text}", BASE + i, operation=text, principal=text, principal_kind=text,
                       tenant=text, team=text, model=text, provider=text, upstream_model=text,
                       error_code=text, cost_usd=1.0,
                       attempt_log=[Attempt(provider=text, model=text, status=500, error_code=text)])
            for i, text in enumerate(HOSTILE_STRINGS)
        ]
        await stores.usage.write_usage(records)
        for record, text in zip(records, HOSTILE_STRINGS, strict=True):
            where = UsageFilter(tenant=text, team=text, principal=text, model=text, provider=text)
            assert await stores.usage.query_usage(where) == [record]
            [row] = await stores.usage.summarize_usage(where, ["tenant", "team", "principal", "model", "provider"])
            assert row.group == {"tenant": text, "team": text, "principal": text, "model": text, "provider": text}
            assert await stores.usage.spend("tenant", text, 0.0) == 1.0
            assert await stores.usage.spend("principal", text, 0.0) == 1.0

        for i, text in enumerate(HOSTILE_STRINGS):
            entry = AuditEntry(id=f"audit{i}:{text}", at=float(i), actor=text, action=text, target_type=text,
                               target_id=text, tenant_id=text, client=text, request_id=text, outcome=text,
                               details={text: text})
            await stores.audit.write_audit(entry)
            assert await stores.audit.query_audit(actor=text, tenant_id=text) == [entry]
            await stores.sessions.put_session(text, text.encode(), 60)
        for text in HOSTILE_STRINGS:
            assert await stores.sessions.get_session(text) == text.encode()
        assert await stores.sessions.get_session("%") is None
        # nothing was dropped or rewritten along the way
        assert len(await stores.usage.query_usage(UsageFilter())) == len(HOSTILE_STRINGS)
        assert len(await stores.audit.query_audit()) == len(HOSTILE_STRINGS)

    # -- several store objects on one database (several processes) ---------------------------------

    @pytest.mark.anyio
    async def test_two_stores_on_one_database(self, database: Any) -> None:
        async with self.open_storage(database) as first, self.open_storage(database) as second:
            a, b = as_stores(first), as_stores(second)
            tenant = await a.keys.create_tenant(make_tenant(id="A"))
            assert await b.keys.get_tenant("A") == tenant
            version, _ = await b.keys.changes_since(0)

            async def work(stores: Stores, name: str) -> None:
                for batch in range(20):
                    await stores.usage.write_usage(
                        [make_usage(f"{name}-{batch}-{i}", BASE + i, tenant="A", cost_usd=0.5) for i in range(25)]
                    )
                    await stores.keys.create_key(make_key("A", f"{name}-hash-{batch}", id=f"{name}-key-{batch:02d}"))
                    await stores.audit.write_audit(AuditEntry(id=f"{name}-{batch}", at=float(batch), actor=name,
                                                              action="key.create", target_type="key"))
                    await stores.sessions.put_session(f"{name}-{batch}", b"v", 60)

            async with anyio.create_task_group() as tg:
                tg.start_soon(work, a, "a")
                tg.start_soon(work, b, "b")
                tg.start_soon(work, a, "c")  # two concurrent writers through one store too

            expected_keys = sorted(f"{n}-key-{i:02d}" for n in "abc" for i in range(20))
            for stores in (a, b):
                [total] = await stores.usage.summarize_usage(UsageFilter(), [])
                assert total.requests == 1500
                assert await stores.usage.spend("tenant", "A", 0.0) == pytest.approx(750.0)
                assert sorted(k.id for k in await stores.keys.list_keys("A")) == expected_keys
                assert len(await stores.audit.query_audit()) == 60
                assert await stores.sessions.get_session("b-19") == b"v"
                _, changed = await stores.keys.changes_since(version)
                assert sorted(changed) == expected_keys

            # a revoke through one store reaches the other's change feed at once
            current, _ = await a.keys.changes_since(0)
            await b.keys.revoke_key("a-key-00", 123.0)
            latest, changed = await a.keys.changes_since(current)
            assert latest > current and changed == ["a-key-00"]
            found = await a.keys.find_key_by_hash("a-hash-0")
            assert found is not None and found.revoked_at == 123.0
